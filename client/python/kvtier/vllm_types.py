"""Minimal stand-ins for the vLLM types the kvtier connector receives.

vLLM cannot be installed where kvtier is built and tested, so the connector
(kvtier.vllm_connector) is written against these duck-typed shapes, which mirror the
fields of vLLM's own classes (vllm v1, 0.9 - 0.11) that the connector reads. When vLLM is
importable, the connector subclasses vLLM's real KVConnectorBase_V1 and receives vLLM's
objects instead; these classes are then only used by the tests.

    vLLM type                                   stand-in           fields read
    vllm.config.VllmConfig                      VllmConfig         kv_transfer_config,
                                                                   model_config, cache_config
    KVTransferConfig                            KVTransferConfig   kv_role,
                                                                   kv_connector_extra_config
    vllm.v1.request.Request                     Request            request_id, prompt_token_ids
    vllm.v1.core.kv_cache_manager.KVCacheBlocks KVCacheBlocks      get_block_ids()
    vllm.v1.core.sched.output.SchedulerOutput   SchedulerOutput    scheduled_new_reqs,
                                                                   scheduled_cached_reqs,
                                                                   num_scheduled_tokens
    NewRequestData                              NewRequestData     req_id, prompt_token_ids,
                                                                   block_ids, num_computed_tokens
    CachedRequestData                           CachedRequestData  req_ids, new_block_ids,
                                                                   num_computed_tokens
    ForwardContext                              (any object; unused)
"""
import enum
from dataclasses import dataclass, field
from typing import Any, Optional


class KVConnectorRole(enum.Enum):
    SCHEDULER = 0
    WORKER = 1


class KVConnectorMetadata:
    """Scheduler -> worker metadata of one engine step (vLLM: an ABC with no fields)."""


class KVConnectorBase_V1:  # noqa: N801 - vLLM's name
    """The subset of vLLM's KVConnectorBase_V1 base behaviour the connector relies on."""

    def __init__(self, vllm_config, role, kv_cache_config=None):
        self._connector_metadata = None
        self._vllm_config = vllm_config
        self._kv_transfer_config = vllm_config.kv_transfer_config
        self._kv_cache_config = kv_cache_config
        self._role = role

    @property
    def role(self):
        return self._role

    def bind_connector_metadata(self, connector_metadata):
        self._connector_metadata = connector_metadata

    def clear_connector_metadata(self):
        self._connector_metadata = None

    def _get_connector_metadata(self):
        assert self._connector_metadata is not None
        return self._connector_metadata

    def has_connector_metadata(self):
        return self._connector_metadata is not None


@dataclass
class KVTransferConfig:
    kv_connector: str = "KvtierConnector"
    kv_role: str = "kv_both"  # kv_producer (prefill), kv_consumer (decode), kv_both
    kv_connector_module_path: str = "kvtier.vllm_connector"
    kv_connector_extra_config: dict = field(default_factory=dict)


@dataclass
class ModelConfig:
    model: str = "test-model"
    dtype: str = "float16"


@dataclass
class CacheConfig:
    block_size: int = 16


@dataclass
class ParallelConfig:
    rank: int = 0
    tensor_parallel_size: int = 1


@dataclass
class VllmConfig:
    kv_transfer_config: KVTransferConfig = field(default_factory=KVTransferConfig)
    model_config: ModelConfig = field(default_factory=ModelConfig)
    cache_config: CacheConfig = field(default_factory=CacheConfig)
    parallel_config: ParallelConfig = field(default_factory=ParallelConfig)


@dataclass
class Request:
    request_id: str
    prompt_token_ids: list

    @property
    def num_tokens(self):
        return len(self.prompt_token_ids)


@dataclass
class KVCacheBlocks:
    blocks: list  # block ids of the single KV cache group

    def get_block_ids(self):
        return (list(self.blocks),)


@dataclass
class NewRequestData:
    req_id: str
    prompt_token_ids: list
    block_ids: tuple  # tuple[list[int], ...], one list per KV cache group
    num_computed_tokens: int


@dataclass
class CachedRequestData:
    req_ids: list = field(default_factory=list)
    new_block_ids: list = field(default_factory=list)  # per request: tuple[list[int]] or None
    num_computed_tokens: list = field(default_factory=list)


@dataclass
class SchedulerOutput:
    scheduled_new_reqs: list = field(default_factory=list)
    scheduled_cached_reqs: CachedRequestData = field(default_factory=CachedRequestData)
    num_scheduled_tokens: dict = field(default_factory=dict)
    finished_req_ids: set = field(default_factory=set)
    extra: Optional[Any] = None
