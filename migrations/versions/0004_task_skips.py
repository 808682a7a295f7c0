"""Task skips: a skipped task goes back to the queue for the other annotators

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 05:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "task_skips",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("annotator_id", sa.Integer(), nullable=False),
        sa.Column("unsure", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["task_id"], ["annotation_tasks.id"],
            name=op.f("fk_task_skips_task_id_annotation_tasks"), ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["annotator_id"], ["annotators.id"],
            name=op.f("fk_task_skips_annotator_id_annotators"), ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_skips")),
        sa.UniqueConstraint("task_id", "annotator_id", name="uq_task_skips_once"),
    )
    op.create_index(op.f("ix_task_skips_task_id"), "task_skips", ["task_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_task_skips_task_id"), table_name="task_skips")
    op.drop_table("task_skips")
