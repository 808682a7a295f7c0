"""Settings read from the environment (prefix ``ARTIFACT_LOOP_``) and an optional ``.env``.

Nothing here touches the disk or the network at import time; directories are created by
:meth:`Settings.ensure_dirs` when a command actually needs them.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

from server.acquisition.registry import DEFAULT as DEFAULT_STRATEGY
from server.acquisition.registry import StrategyName


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "artifact-loop"


class Settings(BaseSettings):
    """Everything that differs between a laptop, CI and a GPU cluster."""

    model_config = SettingsConfigDict(env_prefix="ARTIFACT_LOOP_", env_file=".env", extra="ignore")

    data_dir: Path = Field(default_factory=_default_data_dir)
    database_url: str = ""
    broker_url: str = ""
    model_store_dir: Path | None = None

    # The loop
    retrain_every: int = 25
    batch_size: int = 25
    audit_size: int = 100
    lease_seconds: int = 600
    max_upload_bytes: int = 50 * 1024 * 1024
    stats_sample_patches: int = 64

    # Models (a job's params override these)
    pretrain_patches: int = 2000
    pretrain_epochs: int = 6
    train_epochs: int = 60  # an upper bound: early stopping ends some trainings sooner
    # a new classifier starts from the active one (when both grew from the active autoencoder)
    # instead of from the autoencoder alone: on real-tissue validation sections it ranked
    # better from 200 labels on and dipped less from one version to the next
    warm_start: bool = True
    # flips/quarter turns averaged per patch when a classifier scores patches (1 = off): 8
    # gave +0.02-0.03 PR-AUC on held-out sections, for 8x the scoring compute
    tta: int = Field(default=8, ge=1, le=8)
    # share of each score chunk's candidates, the nearest to the decision boundary after one
    # view, that are scored again with the ``tta`` views (1: every candidate)
    tta_shortlist: float = Field(default=0.1, ge=0.0, le=1.0)
    # acquisition: how the next batch is chosen, a strategy of server.acquisition.registry
    acquisition: StrategyName = DEFAULT_STRATEGY
    # unlabelled patches a classifier version scores per round (0: every one): a fresh
    # random sample, the previous round's most uncertain and the autoencoder's most anomalous
    candidates: int = Field(default=50_000, ge=0)
    # a new classifier worse on the audit set beyond its interval stays inactive ("held
    # back"); off, the newest is always active (simulate: its audit set is the test set, which
    # must not choose the model that picks the next batch)
    hold_back_worse: bool = True
    seed: int = 0  # base of every random choice the loop makes (sampling, training)

    # webKnossos server (optional): where tasks are pushed and annotations pulled from.
    # The token is never returned by the API nor logged.
    wk_url: str | None = None
    wk_token: SecretStr | None = None
    wk_timeout_s: int = 60
    wk_sync_every_s: int = 300  # periodic sync of linked datasets; 0 = on demand only
    wk_team: str | None = None  # team owning the task type and projects (default: the first)
    wk_task_type: str = "artifact-loop patch"
    wk_project_prefix: str = "artifact-loop"
    wk_context_px: int = 70  # context around a pushed patch, each side, at the dataset's mag
    # QC of a prediction: fields per section (columns x rows) when the dataset has no tile_size
    qc_field_grid: str = Field(default="4x4", pattern=r"^[1-9][0-9]?x[1-9][0-9]?$")

    # Faults, load and hostile input
    # dataset folders the API may register, separated by ":" or ","; empty = any folder
    dataset_roots: str = ""
    # webKnossos servers (scheme://host[:port]) dataset URLs may point at, besides wk_url
    wk_hosts: str = ""
    max_json_bytes: int = 1024 * 1024  # any request body but a label-file upload
    max_zip_members: int = 1000
    max_zip_inflated_bytes: int = 256 * 1024 * 1024  # all members of a zip together
    retry_after_s: int = 5  # told to clients when the database or the broker is down

    # PostgreSQL connections this process may hold (None: server.db.base.POOL_SIZE, sized so
    # two stacks fit the server's default max_connections; see README: connection budget)
    db_pool_size: int | None = Field(default=None, ge=1)

    # Workers
    visibility_timeout_s: int = 6 * 3600
    # a job still queued this long while its broker queue is empty lost its message: resend
    resend_after_s: int = Field(default=60, ge=5)
    task_expires_s: int = 24 * 3600
    device: str = "auto"
    torch_threads: int = Field(default=0, ge=0)  # CPU threads per model job (0: one per core)
    # a worker lowers its CPU priority by this much (nice): where it shares cores with the API,
    # annotators' requests go first and a training takes what is left (0: no change)
    worker_nice: int = Field(default=10, ge=0, le=19)

    @model_validator(mode="after")
    def _fill_derived(self) -> Settings:
        self.data_dir = self.data_dir.expanduser()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'artifact-loop.sqlite'}"
        if not self.broker_url:
            self.broker_url = "filesystem://"
        if self.model_store_dir is None:
            self.model_store_dir = self.data_dir / "models"
        return self

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        """A URL that cannot be used fails here, once, with what is wrong (password hidden)."""
        if not value:
            return value  # the embedded SQLite file, filled in below

        try:
            url = make_url(value)
        except Exception:  # ArgumentError, or ValueError for a port that is not a number
            shown = f"...@{value.rsplit('@', 1)[1]}" if "@" in value else value  # no password
            raise ValueError(
                f"cannot parse database URL {shown!r}; write "
                "postgresql://user:password@host:5432/name or sqlite:///path/to/file.sqlite"
            ) from None
        if url.get_backend_name() not in ("postgresql", "sqlite"):
            raise ValueError(
                f"unsupported database {url.get_backend_name()!r}: use postgresql://... or "
                "sqlite:///..."
            )
        return value

    @property
    def model_store(self) -> Path:
        assert self.model_store_dir is not None
        return self.model_store_dir

    @property
    def broker_dir(self) -> Path:
        """Folder of Celery's filesystem broker (used only when ``broker_url`` is ``filesystem://``)."""
        return self.data_dir / "broker"

    @property
    def dataset_root_paths(self) -> list[Path]:
        parts = self.dataset_roots.replace(",", os.pathsep).split(os.pathsep)
        return [Path(p).expanduser().resolve() for p in parts if p.strip()]

    @property
    def webknossos_hosts(self) -> list[str]:
        """``scheme://host[:port]`` of every webKnossos server a dataset URL may name."""
        hosts = [self.wk_url or "", *self.wk_hosts.split(",")]
        out = []
        for value in hosts:
            parts = urlsplit(value.strip())
            if parts.scheme in ("http", "https") and parts.netloc:
                out.append(f"{parts.scheme}://{parts.netloc.lower()}")
        return out

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def ensure_dirs(self) -> None:
        for path in (
            self.data_dir,
            self.model_store,
            self.broker_dir / "in",
            self.broker_dir / "processed",
        ):
            path.mkdir(parents=True, exist_ok=True)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
