"""An hourly Dagster job for asapp-elt: dlt loads as assets, every dbt model as an asset (dagster-dbt), then the
push to ASAPP. Run it with `dagster dev -f examples/dagster/definitions.py` from the project folder (install
`pip install -e ".[orchestration]"` first). Configuration is the project's: environment or .dlt/ files.
"""

import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetSpec,
    Definitions,
    MaterializeResult,
    ScheduleDefinition,
    asset,
    define_asset_job,
    multi_asset,
)
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, DbtProject, dbt_assets

from loaders import runtime
from loaders.export_docs import load_export_docs

PROJECT_DIR = Path(__file__).resolve().parents[2]
# dagster-dbt runs `dbt` from PATH: the dbt of this environment (the project's venv), even when not activated
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
runtime.configure()
dbt_project = DbtProject(
    project_dir=PROJECT_DIR,
    profiles_dir=PROJECT_DIR,
    target=runtime.target(),
    target_path=Path(os.environ.get("DBT_TARGET_PATH", PROJECT_DIR / "target")),
)
if (
    not dbt_project.manifest_path.exists()
):  # a fresh checkout: dbt parse writes it (prepare_if_dev only in `dagster dev`)
    dbt_project.preparer.prepare(dbt_project)


FEEDS = sorted(load_export_docs(PROJECT_DIR / "export_docs.yaml").feeds)
APSIS_TABLES = [
    "exports",
    "profiles",
    "profile_attributes",
    "profile_tags",
    "events",
    "sections",
    "attributes",
    "tags",
    "event_types",
]


@multi_asset(
    specs=[AssetSpec(AssetKey(["asapp_raw", feed]), group_name="load") for feed in FEEDS],
    description="ASAPP SFTP feeds -> asapp_raw.<feed> (dlt)",
)
def asapp_raw(context: AssetExecutionContext) -> Iterator[MaterializeResult]:
    from loaders.loads import load_asapp

    stats = load_asapp()
    failed = [f for s in stats.feeds.values() for f in s.failed]
    for feed in FEEDS:
        s = stats.feeds.get(feed)
        yield MaterializeResult(
            asset_key=AssetKey(["asapp_raw", feed]),
            metadata={
                "partitions": s.partitions_loaded if s else 0,
                "rows": s.rows if s else 0,
                "rejected_lines": s.rejected if s else 0,
            },
        )
    if failed:
        raise RuntimeError(f"partitions failed (retried by the next run): {failed}")


@multi_asset(
    specs=[AssetSpec(AssetKey(["apsis_raw", t]), group_name="load") for t in APSIS_TABLES],
    description="APSIS One profile export -> apsis_raw (dlt)",
)
def apsis_raw(context: AssetExecutionContext) -> Iterator[MaterializeResult]:
    from loaders.loads import load_apsis

    rows: dict[str, int] = {}
    if runtime.is_configured("sources.apsis.base_url"):
        rows = load_apsis().rows
    else:
        context.log.info("APSIS is not configured (SOURCES__APSIS__BASE_URL): skipped")
    for table in APSIS_TABLES:
        yield MaterializeResult(asset_key=AssetKey(["apsis_raw", table]), metadata={"rows": rows.get(table, 0)})


class _Translator(DagsterDbtTranslator):
    """dbt sources are the dlt assets above (asapp.<feed> -> asapp_raw/<feed>, apsis.<t> -> apsis_raw/<t>)."""

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> AssetKey:
        if dbt_resource_props["resource_type"] == "source":
            return AssetKey([f"{dbt_resource_props['source_name']}_raw", dbt_resource_props["name"]])
        return AssetKey(dbt_resource_props["name"])  # models by name (stg_asapp__utterances, customer_metadata)


@dbt_assets(manifest=dbt_project.manifest_path, dagster_dbt_translator=_Translator())
def dbt_models(context: AssetExecutionContext, dbt: DbtCliResource) -> Iterator[Any]:
    yield from dbt.cli(["build"], context=context).stream()


@asset(
    deps=[AssetKey("customer_metadata"), AssetKey("customer_metadata_attributes")],
    group_name="push",
    description="customer_metadata -> ASAPP many-customer-metadata API",
)
def asapp_customer_metadata(context: AssetExecutionContext) -> MaterializeResult:
    from loaders.asapp_metadata import push

    if not runtime.is_configured("asapp_api.base_url"):
        context.log.info("ASAPP's metadata API is not configured (ASAPP_API__BASE_URL): skipped")
        return MaterializeResult(metadata={"skipped": True})
    stats = push()
    return MaterializeResult(
        metadata={"sent": stats.sent, "accepted": stats.accepted, "failed": stats.failed, "invalid": stats.invalid}
    )


hourly = define_asset_job("asapp_elt_hourly", selection="*")

defs = Definitions(
    assets=[asapp_raw, apsis_raw, dbt_models, asapp_customer_metadata],
    resources={"dbt": DbtCliResource(project_dir=dbt_project)},
    jobs=[hourly],
    schedules=[ScheduleDefinition(job=hourly, cron_schedule="15 * * * *")],
)
