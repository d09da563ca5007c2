"""The one settings object: defaults from SPEC §3, overridden by a TOML file, then the environment.

Every setting is read from ``PROCPLAT_<UPPER_SNAKE>`` (``ArtifactTtlHours`` →
``PROCPLAT_ARTIFACT_TTL_HOURS``) or from a TOML file named by ``PROCPLAT_CONFIG`` whose keys
are the setting names in either spelling (``ArtifactTtlHours`` or ``artifact_ttl_hours``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

GiB = 1024**3


@dataclass(frozen=True, kw_only=True)
class Settings:
    data: Path = Path("./procplat-data")
    database_url: str | None = None
    dask_address: str | None = None
    dashboard_address: str = ":8787"
    admin_token: str | None = None

    artifact_ttl_hours: float = 24
    dedup_enabled: bool = True
    dedup_lookback_hours: float = 24
    max_estimated_output_bytes_per_submit: int = 20 * GiB
    max_concurrent_tasks_global: int = 32
    max_concurrent_tasks_per_org: int = 10
    max_queued_tasks_per_user: int = 20
    max_concurrent_bulk_downloads_per_user: int = 1
    log_tail_max_lines: int = 200
    log_tail_max_bytes: int = 32768
    progress_update_throttle_seconds: float = 2.0
    default_raster_tile_size: int = 512
    max_archive_extract_size_bytes: int = 5 * GiB
    bulk_download_async_threshold_bytes: int = 500 * 1000**2
    job_index_retention_days: float = 60

    max_task_attempts: int = 3
    max_upload_bytes: int = 100 * GiB
    max_json_body_bytes: int = 1024**2
    sweep_interval_seconds: float = 60.0
    secret_key: str | None = None  # signs links and console cookies; None: <data>/secret-key
    link_max_expiry_seconds: float = 3600.0
    cors_origins: str | None = None  # comma-separated origins allowed cross-origin; None: none
    console_session_hours: float = 12.0
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        tile = self.default_raster_tile_size
        if tile < 16 or tile > 4096 or tile & (tile - 1):
            raise ValueError(
                f"setting default_raster_tile_size: {tile} is not a power of two from 16 to 4096"
            )

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.sqlite_path.resolve()}"

    @property
    def sqlite_path(self) -> Path:
        """Where the embedded index lives when no ``database_url`` is set."""
        return self.data / "procplat.sqlite"

    @property
    def datasets_dir(self) -> Path:
        return self.data / "datasets"

    @property
    def artifacts_dir(self) -> Path:
        return self.data / "artifacts"

    @property
    def work_dir(self) -> Path:
        return self.data / "work"

    @property
    def cors_origin_list(self) -> list[str]:
        """The origins of ``cors_origins`` (``*`` allows any)."""
        return [o.strip() for o in (self.cors_origins or "").split(",") if o.strip()]

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _coerce(kind: Any, raw: Any, name: str) -> Any:
    text = str(raw).strip()
    try:
        if kind in (bool, "bool"):
            if isinstance(raw, bool):
                return raw
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if kind in (int, "int"):
            return int(float(text)) if not isinstance(raw, int) else raw
        if kind in (float, "float"):
            return float(text)
        if kind in (Path, "Path"):
            return Path(text)
    except ValueError:
        raise ValueError(f"setting {name}: cannot read {raw!r} as {kind}") from None
    return text or None


def load_settings(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build the settings from the TOML file (if any), the environment and ``overrides``."""
    env = os.environ if env is None else env
    fields = {f.name: f for f in dataclasses.fields(Settings) if f.name != "extra"}
    values: dict[str, Any] = {}
    config_file = env.get("PROCPLAT_CONFIG")
    if config_file:
        with open(config_file, "rb") as handle:
            for key, raw in tomllib.load(handle).items():
                name = _snake(key) if key not in fields else key
                if name in fields:
                    values[name] = _coerce(fields[name].type, raw, key)
    for name, f in fields.items():
        raw = env.get(f"PROCPLAT_{name.upper()}")
        if raw is not None and raw != "":
            values[name] = _coerce(f.type, raw, name)
    values.update(overrides)
    return Settings(**values)
