"""A vLLM v1 KV connector that keeps prompt KV blocks in a kvtier cluster.

Prefill instances (kv_role "kv_producer" or "kv_both") compress every full 128-token block
of a finished prompt with the KVarN codec and Put it into kvtier (skipping blocks the
cluster already has); decode instances ("kv_consumer" or "kv_both") Lookup a new
request's prompt, load the prefix hit into their paged KV cache and compute only the
rest. Enable it with (docs/vllm.md):

    vllm serve MODEL --kv-transfer-config '{"kv_connector": "KvtierConnector",
        "kv_connector_module_path": "kvtier.vllm_connector", "kv_role": "kv_both",
        "kv_connector_extra_config": {"kvtier_endpoints": ["kvtier:50051"]}}'

kv_connector_extra_config keys (all optional except the endpoints):
    kvtier_endpoints   list or comma-separated "host:port"     (or kvtier_dns_name)
    kvtier_token       bearer token; kvtier_tls, kvtier_tls_ca_file, kvtier_tls_cert_file,
                       kvtier_tls_key_file, kvtier_tls_server_name
    kvtier_namespace   default "vllm/<model>/<preset>/sink<n>"
    kvtier_preset      default "k4v2_g128";  kvtier_sink_blocks: default 1 (first block FP16)
    kvtier_part        default: the tensor-parallel rank
    kvtier_timeout_s   default 10

The paged caches are the FlashAttention layout [2, num_blocks, block_size, kv_heads,
head_dim] per layer (torch tensors in vLLM, numpy arrays in the tests); block_size must
divide the codec's tile size (128). The codec here is the CPU one from the binding: on a
GPU deployment the C++ client/gpu Exporter/Importer does the same on the device.

Transfers are synchronous within the engine step: loads finish in wait_for_layer_load
(the fetch of all layers starts in start_load_kv on a background thread), saves in
wait_for_save. A block that cannot be loaded (evicted, server down, corrupt) leaves the
cache untouched and its vLLM block ids are reported by get_block_ids_with_load_errors(),
so vLLM recomputes them. Not thread-safe: vLLM calls each side from one thread.
"""
import threading
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from . import _kvtier as kv

try:  # pragma: no cover - exercised only where vLLM is installed
    from vllm.distributed.kv_transfer.kv_connector.v1.base import (
        KVConnectorBase_V1,
        KVConnectorMetadata,
        KVConnectorRole,
    )
except ImportError:
    from .vllm_types import KVConnectorBase_V1, KVConnectorMetadata, KVConnectorRole


@dataclass
class LoadSpec:
    req_id: str
    token_ids: list
    block_ids: list  # vLLM block ids of the request (group 0)
    start: int  # first token to load (tokens before it are computed locally)
    end: int  # one past the last token to load (a multiple of the tile size)


@dataclass
class SaveSpec:
    req_id: str
    token_ids: list
    block_ids: list
    num_tokens: int  # prompt tokens whose KV is complete after this step


@dataclass
class KvtierConnectorMetadata(KVConnectorMetadata):
    loads: list = field(default_factory=list)
    saves: list = field(default_factory=list)


def _to_numpy(x):
    """A host float32 view/copy of a cache slice (numpy array or torch tensor)."""
    if isinstance(x, np.ndarray):
        return x.astype(np.float32, copy=False)
    return x.detach().to("cpu").float().numpy()  # torch


def _assign(cache, index, value):
    """cache[index] = value (numpy float32) for a numpy array or a torch tensor."""
    if isinstance(cache, np.ndarray):
        cache[index] = value.astype(cache.dtype, copy=False)
    else:  # torch
        import torch  # noqa: PLC0415 - only on a torch cache

        cache[index] = torch.from_numpy(value).to(device=cache.device, dtype=cache.dtype)


def _block_ids_of(block_ids):
    """Group 0's block ids from vLLM's tuple[list[int], ...] (or a plain list)."""
    if block_ids and isinstance(block_ids[0], (list, tuple)):
        return list(block_ids[0])
    return list(block_ids or [])


class KvtierConnector(KVConnectorBase_V1):
    def __init__(self, vllm_config, role, kv_cache_config=None):
        try:
            super().__init__(vllm_config, role, kv_cache_config)
        except TypeError:  # vLLM < 0.11: (vllm_config, role)
            super().__init__(vllm_config, role)
        extra = dict(vllm_config.kv_transfer_config.kv_connector_extra_config or {})
        self._kv_role = getattr(vllm_config.kv_transfer_config, "kv_role", "kv_both")
        self._preset = extra.get("kvtier_preset", "k4v2_g128")
        self._tile = kv.group_size(self._preset)
        self._sink_blocks = int(extra.get("kvtier_sink_blocks", 1))
        self._block_size = int(vllm_config.cache_config.block_size)
        if self._tile % self._block_size != 0:
            raise ValueError(f"vLLM block_size {self._block_size} must divide the kvtier tile "
                             f"size {self._tile}")
        model = getattr(vllm_config.model_config, "model", "model")
        self._ns = extra.get("kvtier_namespace",
                             f"vllm/{model}/{self._preset}/sink{self._sink_blocks}")
        self._part = int(extra.get("kvtier_part", self._tp_rank(vllm_config)))
        endpoints = extra.get("kvtier_endpoints", [])
        if isinstance(endpoints, str):
            endpoints = [e.strip() for e in endpoints.split(",") if e.strip()]
        self._client = kv.Client(
            endpoints=list(endpoints), dns_name=extra.get("kvtier_dns_name", ""),
            token=extra.get("kvtier_token", ""), tls=bool(extra.get("kvtier_tls", False)),
            tls_ca_file=extra.get("kvtier_tls_ca_file", ""),
            tls_cert_file=extra.get("kvtier_tls_cert_file", ""),
            tls_key_file=extra.get("kvtier_tls_key_file", ""),
            tls_server_name=extra.get("kvtier_tls_server_name", ""),
            timeout_s=float(extra.get("kvtier_timeout_s", 10.0)),
            transport=str(extra.get("kvtier_transport", "grpc")))
        # Scheduler side.
        self._lookups = {}  # req_id -> loadable tokens (a multiple of the tile)
        self._pending_loads = []  # LoadSpec, until the next build_connector_meta
        self._tracked = {}  # req_id -> [token_ids, block_ids, computed, saved]
        # Worker side.
        self._caches = {}  # layer name -> paged cache [2, blocks, block_size, Hk, D]
        self._layer_index = {}
        self._fetch = None  # (thread, result dict) of this step's loads
        self._loaded_layers = set()
        self._save_buffers = {}  # req_id -> (first block to save, [layers] of (k, v))
        self._load_errors = set()

    @staticmethod
    def _tp_rank(vllm_config):
        try:  # pragma: no cover - vLLM only
            from vllm.distributed.parallel_state import get_tensor_model_parallel_rank

            return get_tensor_model_parallel_rank()
        except Exception:  # noqa: BLE001 - no vLLM or no process group: rank 0
            return getattr(getattr(vllm_config, "parallel_config", None), "rank", 0)

    def _chain(self, token_ids, n_tokens):
        return kv.chain_hashes(self._ns, np.asarray(token_ids[:n_tokens], dtype=np.int32),
                               self._tile)

    # ------------------------------------------------------------------ scheduler side

    def get_num_new_matched_tokens(self, request, num_computed_tokens):
        if self._kv_role == "kv_producer":
            return 0, False
        tokens = request.prompt_token_ids
        # At least one prompt token must be computed locally (vLLM needs its logits).
        usable = (max(len(tokens) - 1, 0) // self._tile) * self._tile
        if usable <= num_computed_tokens:
            return 0, False
        chain = self._chain(tokens, usable)
        try:
            hit = self._client.lookup(self._ns, self._part, chain, self._tile)
        except kv.KvtierError:
            return 0, False  # the tier is a cache: an error is a miss
        loadable = hit * self._tile
        self._lookups[request.request_id] = loadable
        return max(0, loadable - num_computed_tokens), False

    def update_state_after_alloc(self, request, blocks, num_external_tokens):
        if num_external_tokens <= 0:
            return
        end = self._lookups.get(request.request_id, 0)
        start = end - num_external_tokens
        if start < 0 or end <= start:
            return
        self._pending_loads.append(LoadSpec(
            req_id=request.request_id, token_ids=list(request.prompt_token_ids),
            block_ids=_block_ids_of(blocks.get_block_ids()), start=start, end=end))

    def build_connector_meta(self, scheduler_output):
        meta = KvtierConnectorMetadata(loads=self._pending_loads)
        self._pending_loads = []
        self._lookups.clear()
        if self._kv_role == "kv_consumer":
            return meta
        n_sched = scheduler_output.num_scheduled_tokens
        for new in scheduler_output.scheduled_new_reqs:
            self._tracked[new.req_id] = [list(new.prompt_token_ids),
                                         _block_ids_of(new.block_ids),
                                         new.num_computed_tokens + n_sched.get(new.req_id, 0),
                                         False]
        cached = scheduler_output.scheduled_cached_reqs
        if isinstance(cached, list):  # vLLM < 0.10: a list of per-request objects
            items = [(c.req_id, c.new_block_ids, c.num_computed_tokens) for c in cached]
        else:
            items = list(zip(cached.req_ids, cached.new_block_ids, cached.num_computed_tokens))
        for req_id, new_blocks, computed in items:
            t = self._tracked.get(req_id)
            if t is None:
                continue
            if new_blocks:
                t[1].extend(_block_ids_of(new_blocks))
            t[2] = computed + n_sched.get(req_id, 0)
        for req_id, t in self._tracked.items():
            token_ids, block_ids, computed, saved = t
            full = (len(token_ids) // self._tile) * self._tile
            if not saved and full > 0 and computed >= len(token_ids):
                meta.saves.append(SaveSpec(req_id=req_id, token_ids=token_ids,
                                           block_ids=list(block_ids), num_tokens=full))
                t[3] = True
        return meta

    def request_finished(self, request, block_ids):
        self._tracked.pop(request.request_id, None)
        self._lookups.pop(request.request_id, None)
        return False, None  # saves complete within the step (wait_for_save)

    # ------------------------------------------------------------------ worker side

    def register_kv_caches(self, kv_caches):
        self._caches = dict(kv_caches)
        self._layer_index = {name: i for i, name in enumerate(self._caches)}
        for name, c in self._caches.items():
            if len(c.shape) != 5 or c.shape[0] != 2 or c.shape[2] != self._block_size:
                raise ValueError(f"layer {name}: expected a [2, num_blocks, {self._block_size}, "
                                 f"kv_heads, head_dim] cache, got {tuple(c.shape)}")

    def _vllm_blocks(self, spec_block_ids, tile_index, first_token=0):
        """(vLLM block id, offset in the tile) of tile `tile_index`, from first_token on."""
        per_tile = self._tile // self._block_size
        out = []
        for i in range(per_tile):
            pos = tile_index * per_tile + i
            if pos * self._block_size < first_token or pos >= len(spec_block_ids):
                continue
            out.append((spec_block_ids[pos], i * self._block_size))
        return out

    def start_load_kv(self, forward_context, **kwargs):
        self._loaded_layers = set()
        self._fetch = None
        meta = self._connector_metadata
        if meta is None or not getattr(meta, "loads", None):
            return
        result = {}

        def fetch():
            for spec in meta.loads:
                first_tile = spec.start // self._tile
                chain = self._chain(spec.token_ids, spec.end)[first_tile:]
                payloads = self._client.get(self._ns, self._part, chain)
                decoded = []
                for p in payloads:  # stop at the first miss: the rest is recomputed
                    if p is None:
                        break
                    try:
                        decoded.append(kv.decode_block(p))
                    except kv.KvtierError:
                        break
                result[spec.req_id] = (first_tile, decoded)

        thread = threading.Thread(target=fetch, name="kvtier-load", daemon=True)
        thread.start()
        self._fetch = (thread, result, meta.loads)

    def _finish_fetch(self):
        thread, result, loads = self._fetch
        thread.join()
        if "_errors_recorded" not in result:
            result["_errors_recorded"] = True
            for spec in loads:
                first_tile, decoded = result.get(spec.req_id, (0, []))
                last_tile = spec.end // self._tile
                for tile in range(first_tile + len(decoded), last_tile):
                    for block_id, _ in self._vllm_blocks(spec.block_ids, tile, spec.start):
                        self._load_errors.add(block_id)
        return result, loads

    def wait_for_layer_load(self, layer_name):
        if self._fetch is None or layer_name in self._loaded_layers:
            return
        result, loads = self._finish_fetch()
        layer = self._layer_index[layer_name]
        cache = self._caches[layer_name]
        for spec in loads:
            first_tile, decoded = result.get(spec.req_id, (0, []))
            for j, (k, v) in enumerate(decoded):
                tile = first_tile + j
                for block_id, off in self._vllm_blocks(spec.block_ids, tile, spec.start):
                    _assign(cache, (0, block_id), k[layer, off:off + self._block_size])
                    _assign(cache, (1, block_id), v[layer, off:off + self._block_size])
        self._loaded_layers.add(layer_name)

    def save_kv_layer(self, layer_name, kv_layer, attn_metadata, **kwargs):
        meta = self._connector_metadata
        if meta is None or not getattr(meta, "saves", None):
            return
        layer = self._layer_index.get(layer_name)
        if layer is None:
            return
        per_tile = self._tile // self._block_size
        for spec in meta.saves:
            buf = self._save_buffers.get(spec.req_id)
            if buf is None:
                chain = self._chain(spec.token_ids, spec.num_tokens)
                try:
                    first = self._client.lookup(self._ns, self._part, chain, self._tile)
                except kv.KvtierError:
                    first = 0
                buf = (first, chain, [None] * len(self._caches))
                self._save_buffers[spec.req_id] = buf
            first, chain, layers = buf
            if first >= len(chain):
                continue
            ids = spec.block_ids[first * per_tile:len(chain) * per_tile]
            k = _to_numpy(kv_layer[0][ids])  # [blocks, block_size, Hk, D]
            v = _to_numpy(kv_layer[1][ids])
            shape = (len(chain) - first, self._tile) + tuple(k.shape[2:])
            layers[layer] = (k.reshape(shape), v.reshape(shape))

    def wait_for_save(self):
        buffers, self._save_buffers = self._save_buffers, {}
        for req_id, (first, chain, layers) in buffers.items():
            if first >= len(chain) or any(x is None for x in layers):
                continue
            hashes, payloads = [], []
            for j in range(len(chain) - first):
                tile = first + j
                k = np.stack([x[0][j] for x in layers])  # [L, G, Hk, D]
                v = np.stack([x[1][j] for x in layers])
                sink = tile < self._sink_blocks
                payloads.append(kv.encode_block(k, v, preset=self._preset,
                                                encoding="fp16" if sink else "tiles",
                                                sink=sink and tile == 0))
                hashes.append(chain[tile])
            try:
                self._client.put(self._ns, self._part, hashes, payloads)
            except kv.KvtierError:
                pass  # a failed save is a future miss, never an engine error

    def get_finished(self, finished_req_ids):
        return None, None

    def get_block_ids_with_load_errors(self):
        errors, self._load_errors = self._load_errors, set()
        return errors

    def shutdown(self):
        if self._fetch is not None:
            self._fetch[0].join()
