"""Label suspects: training labels the model confidently contradicts out of fold

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-10 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "label_suspects",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "dataset_id",
            sa.Integer(),
            sa.ForeignKey("datasets.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "label_id", sa.Integer(), sa.ForeignKey("labels.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column(
            "model_version_id",
            sa.Integer(),
            sa.ForeignKey("model_versions.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("p_artifact", sa.Float(), nullable=True),
        sa.Column("p_given", sa.Float(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_label_suspects_dataset_id", "label_suspects", ["dataset_id"])
    op.create_index("ix_label_suspects_label_id", "label_suspects", ["label_id"])


def downgrade() -> None:
    op.drop_index("ix_label_suspects_label_id", table_name="label_suspects")
    op.drop_index("ix_label_suspects_dataset_id", table_name="label_suspects")
    op.drop_table("label_suspects")
