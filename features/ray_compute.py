"""Feast's Ray compute engine, writing Arrow batches straight to the online store.

Named by features/ray_engine.py for FP_COMPUTE_ENGINE=ray (``batch_engine: type:
features.ray_compute.PlatformRayComputeEngine``). Everything is Feast's Ray engine (the
distributed read through the Ray offline store, its filter and dedup, the registry bookkeeping)
except the last step, as features/engine.py does for the local engine: Feast's write node turns
each batch into pandas, then into one protobuf object per value, before handing rows to the
online store; here a store that takes Arrow (features/online_store.py) gets each Ray batch as it
is, in parallel Ray tasks, and writes the same bytes. Any other store gets Feast's path unchanged.
"""

from __future__ import annotations

import logging
from typing import Literal

import pyarrow as pa
from feast.infra.common.materialization_job import MaterializationJobStatus, MaterializationTask
from feast.infra.common.serde import SerializedArtifacts
from feast.infra.compute_engines.dag.model import DAGFormat
from feast.infra.compute_engines.dag.plan import ExecutionPlan
from feast.infra.compute_engines.dag.value import DAGValue
from feast.infra.compute_engines.ray.compute import RayComputeEngine
from feast.infra.compute_engines.ray.config import RayComputeEngineConfig
from feast.infra.compute_engines.ray.feature_builder import RayFeatureBuilder
from feast.infra.compute_engines.ray.job import RayMaterializationJob
from feast.infra.compute_engines.ray.nodes import RayWriteNode
from feast.infra.ray_initializer import ensure_ray_initialized

log = logging.getLogger(__name__)


class PlatformRayComputeEngineConfig(RayComputeEngineConfig):
    type: Literal["features.ray_compute.PlatformRayComputeEngine"] = "features.ray_compute.PlatformRayComputeEngine"  # type: ignore[assignment]


class ArrowRayWriteNode(RayWriteNode):
    """Feast's Ray write node, with online writes of whole Arrow batches where the store takes them."""

    def execute(self, context) -> DAGValue:
        if not (self.feature_view.online and hasattr(context.online_store, "online_write_arrow")) \
                or getattr(self.feature_view, "offline", False):
            return super().execute(context)
        dataset = self.get_single_input_value(context).data
        artifacts = SerializedArtifacts.serialize(feature_view=self.feature_view, repo_config=context.repo_config)
        batch_size = context.repo_config.materialization_config.online_write_batch_size or 10_000

        def write(table: pa.Table) -> pa.Table:
            view, online_store, _, repo_config = artifacts.unserialize()
            written = sum(online_store.online_write_arrow(repo_config, view, batch)
                          for batch in table.to_batches(max_chunksize=batch_size))
            return pa.table({"rows": [table.num_rows], "written": [written]})

        counts = dataset.map_batches(write, batch_format="pyarrow", batch_size=batch_size,
                                     concurrency=self.config.write_concurrency or self.config.max_workers or 1).materialize()
        rows, written = (int(counts.sum(c) or 0) for c in ("rows", "written"))  # sum of no rows: None
        log.info("%s: %d rows read, %d written to the online store, %d skipped as older than the served values",
                 self.feature_view.name, rows, written, rows - written)
        return DAGValue(data=counts, format=DAGFormat.RAY,
                        metadata={"written": True, "feature_view": self.feature_view.name, "online": True, "offline": False})


class ArrowRayFeatureBuilder(RayFeatureBuilder):
    def build(self) -> ExecutionPlan:
        """Feast's plan, its write nodes made Arrow writers. Feast's materialization plan builds its
        RayWriteNodes inline (not through build_output_nodes), so they are recast here: the
        subclass adds behaviour only, no state, and the plan's wiring stays Feast's."""
        plan = super().build()
        for node in plan.nodes:
            if type(node) is RayWriteNode:
                node.__class__ = ArrowRayWriteNode
        return plan


class PlatformRayComputeEngine(RayComputeEngine):
    def _ensure_ray_initialized(self):
        """Ray starts (or is connected to) when there is work for it, not when Feast builds the
        engine: `feast apply` and every registry call build it too, and need no cluster."""

    def _materialize_one(self, registry, task: MaterializationTask, from_offline_store: bool = False, **kwargs):
        ensure_ray_initialized(self.config)
        if from_offline_store:
            return super()._materialize_one(registry, task, from_offline_store=True, **kwargs)
        job_id = f"{task.feature_view.name}-{task.start_time}-{task.end_time}"
        try:
            context = self.get_execution_context(registry, task)
            result = ArrowRayFeatureBuilder(registry, task.feature_view, task, self.config).build().execute(context)
        except Exception as exc:  # Feast reports a failed job through its status, as its own engine does
            return RayMaterializationJob(job_id=job_id, status=MaterializationJobStatus.ERROR, error=exc)
        return RayMaterializationJob(job_id=job_id, status=MaterializationJobStatus.SUCCEEDED, result=result)
