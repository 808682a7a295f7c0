"""webKnossos sync: pushed tasks and imported annotations

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 19:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "wk_tasks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("dataset_id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=True),
        sa.Column("wk_task_id", sa.String(length=100), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "state IN ('open', 'finished', 'cancelled')", name=op.f("ck_wk_tasks_state")
        ),
        sa.ForeignKeyConstraint(
            ["dataset_id"], ["datasets.id"], name=op.f("fk_wk_tasks_dataset_id_datasets"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["task_id"], ["annotation_tasks.id"],
            name=op.f("fk_wk_tasks_task_id_annotation_tasks"), ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_wk_tasks")),
        sa.UniqueConstraint("dataset_id", "wk_task_id", name="uq_wk_tasks_task"),
    )
    op.create_index("ix_wk_tasks_open", "wk_tasks", ["dataset_id", "state"])
    op.create_index(op.f("ix_wk_tasks_task_id"), "wk_tasks", ["task_id"])
    op.create_table(
        "wk_annotations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("dataset_id", sa.Integer(), nullable=False),
        sa.Column("annotation_id", sa.String(length=100), nullable=False),
        sa.Column("wk_task_id", sa.String(length=100), nullable=True),
        sa.Column("modified", sa.BigInteger(), nullable=False),
        sa.Column("labels_added", sa.Integer(), nullable=False),
        sa.Column("imported_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["dataset_id"], ["datasets.id"],
            name=op.f("fk_wk_annotations_dataset_id_datasets"), ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_wk_annotations")),
        sa.UniqueConstraint("dataset_id", "annotation_id", name="uq_wk_annotations_annotation"),
    )


def downgrade() -> None:
    op.drop_table("wk_annotations")
    op.drop_index(op.f("ix_wk_tasks_task_id"), table_name="wk_tasks")
    op.drop_index("ix_wk_tasks_open", table_name="wk_tasks")
    op.drop_table("wk_tasks")
