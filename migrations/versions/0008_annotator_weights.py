"""Annotators' label weights: how much their labels count in training and audit consensus

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-12 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("annotators") as batch:
        batch.add_column(
            sa.Column("label_weight", sa.Float(), nullable=False, server_default=sa.text("1"))
        )
        batch.add_column(sa.Column("label_weight_reason", sa.Text(), nullable=True))
        batch.create_check_constraint(
            op.f("ck_annotators_label_weight_range"), "label_weight >= 0 AND label_weight <= 1"
        )


def downgrade() -> None:
    with op.batch_alter_table("annotators") as batch:
        batch.drop_constraint(op.f("ck_annotators_label_weight_range"), type_="check")
        batch.drop_column("label_weight_reason")
        batch.drop_column("label_weight")
