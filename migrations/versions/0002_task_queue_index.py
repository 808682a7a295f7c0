"""task queue index in lease order

Leasing asks for the open task of a dataset with the lowest rank; an index on
(dataset_id, status, rank, id) answers it without sorting the queue.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 22:50:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("annotation_tasks", schema=None) as batch_op:
        batch_op.drop_index("ix_tasks_queue")
        batch_op.create_index(
            "ix_tasks_queue", ["dataset_id", "status", "rank", "id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("annotation_tasks", schema=None) as batch_op:
        batch_op.drop_index("ix_tasks_queue")
        batch_op.create_index(
            "ix_tasks_queue", ["dataset_id", "status", "kind", "rank"], unique=False
        )
