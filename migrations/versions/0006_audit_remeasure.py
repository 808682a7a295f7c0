"""Audit re-measurement jobs; review list resolutions

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 01:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KINDS_BEFORE = (
    "pretrain", "train", "score", "score_chunk", "propose", "predict", "predict_chunk", "sync",
    "import",
)  # fmt: skip
KINDS_AFTER = (*KINDS_BEFORE[:-1], "audit", "import")


def _kinds(values: tuple[str, ...]) -> str:
    return f"kind IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint(op.f("ck_jobs_kind"), type_="check")
        batch.create_check_constraint(op.f("ck_jobs_kind"), _kinds(KINDS_AFTER))
    with op.batch_alter_table("annotation_tasks") as batch:
        batch.add_column(sa.Column("resolved_by_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_foreign_key(
            op.f("fk_annotation_tasks_resolved_by_id_annotators"),
            "annotators", ["resolved_by_id"], ["id"], ondelete="SET NULL",
        )  # fmt: skip


def downgrade() -> None:
    with op.batch_alter_table("annotation_tasks") as batch:
        batch.drop_constraint(
            op.f("fk_annotation_tasks_resolved_by_id_annotators"), type_="foreignkey"
        )
        batch.drop_column("resolved_at")
        batch.drop_column("resolved_by_id")
    op.execute("DELETE FROM jobs WHERE kind = 'audit'")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint(op.f("ck_jobs_kind"), type_="check")
        batch.create_check_constraint(op.f("ck_jobs_kind"), _kinds(KINDS_BEFORE))
