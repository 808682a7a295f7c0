"""Labels: the labels service, label-file formats, import and export."""
