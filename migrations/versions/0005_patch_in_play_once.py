"""A patch is in play (open or leased) in at most one batch of proposals

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 01:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

IN_PLAY = "kind = 'proposal' AND status IN ('open', 'leased')"

# Two batch replacements at once could leave a patch in play in two batches. Of each such
# patch, one task stays: a leased one before an open one (its annotator may be labelling
# it), else the newest; the others are retired, as the later replacement would have done.
RETIRE_DUPLICATES = f"""
UPDATE annotation_tasks SET status = 'retired'
WHERE {IN_PLAY} AND grid_index IS NOT NULL AND EXISTS (
    SELECT 1 FROM annotation_tasks AS other
    WHERE other.dataset_id = annotation_tasks.dataset_id
      AND other.grid_index = annotation_tasks.grid_index
      AND other.id <> annotation_tasks.id
      AND other.kind = 'proposal' AND other.status IN ('open', 'leased')
      AND (
        (other.status = 'leased' AND annotation_tasks.status = 'open')
        OR (other.status = annotation_tasks.status AND other.id > annotation_tasks.id)
      )
)
"""


def upgrade() -> None:
    op.execute(RETIRE_DUPLICATES)
    op.create_index(
        "uq_tasks_patch_in_play",
        "annotation_tasks",
        ["dataset_id", "grid_index"],
        unique=True,
        postgresql_where=sa.text(IN_PLAY),
        sqlite_where=sa.text(IN_PLAY),
    )


def downgrade() -> None:
    op.drop_index("uq_tasks_patch_in_play", table_name="annotation_tasks")
