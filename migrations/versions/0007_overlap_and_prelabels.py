"""Overlap: how many distinct annotators a task wants; labels that accepted a pre-label

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-09 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("annotation_tasks") as batch:
        batch.add_column(
            sa.Column("labels_wanted", sa.Integer(), nullable=False, server_default=sa.text("1"))
        )
    # every audit patch goes to a second annotator (those already labelled stay as they are)
    op.execute(
        "UPDATE annotation_tasks SET labels_wanted = 2 "
        "WHERE kind = 'audit' AND status IN ('open', 'leased', 'expired')"
    )
    with op.batch_alter_table("labels") as batch:
        batch.add_column(
            sa.Column("from_prelabel", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("labels") as batch:
        batch.drop_column("from_prelabel")
    with op.batch_alter_table("annotation_tasks") as batch:
        batch.drop_column("labels_wanted")
