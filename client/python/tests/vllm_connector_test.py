"""Drives kvtier.vllm_connector.KvtierConnector the way vLLM's v1 scheduler and workers
call it (stand-in vLLM types from kvtier.vllm_types; numpy paged caches), against a real
kvtier-server: a prefill instance saves a prompt, a decode instance loads it back.
"""
import unittest

import numpy as np

import kvtier
from kvtier import vllm_types as vt
from kvtier.vllm_connector import KvtierConnector
from _server import Server, free_port

LAYERS, HK, D, BS, NUM_BLOCKS, G = 3, 2, 128, 16, 64, 128
NAMES = [f"model.layers.{i}.self_attn.attn" for i in range(LAYERS)]


# Connector settings every instance of the running test class gets (the UCX class below).
EXTRA_DEFAULTS = {}


def config(endpoint, role="kv_both", **extra):
    cfg = vt.VllmConfig()
    cfg.kv_transfer_config.kv_role = role
    cfg.kv_transfer_config.kv_connector_extra_config = {"kvtier_endpoints": [endpoint],
                                                        **EXTRA_DEFAULTS, **extra}
    cfg.cache_config.block_size = BS
    return cfg


def paged_caches(poison=np.float16(-7.0)):
    return {n: np.full((2, NUM_BLOCKS, BS, HK, D), poison, np.float16) for n in NAMES}


class Instance:
    """One vLLM instance: a scheduler-side and a worker-side connector and its caches."""

    def __init__(self, endpoint, role, **extra):
        cfg = config(endpoint, role, **extra)
        self.sched = KvtierConnector(cfg, vt.KVConnectorRole.SCHEDULER)
        self.worker = KvtierConnector(cfg, vt.KVConnectorRole.WORKER)
        self.caches = paged_caches()
        self.worker.register_kv_caches(self.caches)

    def step(self, new_reqs, num_scheduled, compute=None):
        """One engine step: build metadata, then the worker's forward pass."""
        so = vt.SchedulerOutput(scheduled_new_reqs=new_reqs, num_scheduled_tokens=num_scheduled)
        meta = self.sched.build_connector_meta(so)
        self.worker.bind_connector_metadata(meta)
        self.worker.start_load_kv(forward_context=None)
        for i, name in enumerate(NAMES):
            self.worker.wait_for_layer_load(name)
            if compute is not None:
                compute(i, self.caches[name])  # the attention layer writes its KV
            self.worker.save_kv_layer(name, self.caches[name], attn_metadata=None)
        self.worker.wait_for_save()
        finished = self.worker.get_finished(set())
        self.worker.clear_connector_metadata()
        return meta, finished


def prompt_kv(seed, tokens):
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.5, 1.5, size=(1, 1, HK, D))
    k = (rng.standard_normal((LAYERS, tokens, HK, D)) * scale).astype(np.float16)
    v = rng.standard_normal((LAYERS, tokens, HK, D)).astype(np.float16)
    return k, v


def write_prompt(block_ids, k, v):
    """A `compute` callback writing the prompt's KV into the request's slots."""
    def compute(layer, cache):
        for t in range(k.shape[1]):
            cache[0, block_ids[t // BS], t % BS] = k[layer, t]
            cache[1, block_ids[t // BS], t % BS] = v[layer, t]
    return compute


def read_tokens(cache, block_ids, first, last):
    k = np.stack([cache[0, block_ids[t // BS], t % BS] for t in range(first, last)])
    v = np.stack([cache[1, block_ids[t // BS], t % BS] for t in range(first, last)])
    return k.astype(np.float32), v.astype(np.float32)


def rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


class VllmConnectorTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def prefill(self, req_id, tokens, k, v, ns):
        """A prefill instance runs the whole prompt in one step and saves it."""
        p = Instance(self.server.endpoint, "kv_producer", kvtier_namespace=ns)
        req = vt.Request(req_id, tokens)
        self.assertEqual(p.sched.get_num_new_matched_tokens(req, 0), (0, False))
        blocks = list(range(3, 3 + (len(tokens) + BS - 1) // BS))
        p.sched.update_state_after_alloc(req, vt.KVCacheBlocks(blocks), 0)
        new = vt.NewRequestData(req_id, tokens, (blocks,), 0)
        meta, finished = p.step([new], {req_id: len(tokens)}, write_prompt(blocks, k, v))
        self.assertEqual(len(meta.saves), 1)
        self.assertEqual(meta.saves[0].num_tokens, (len(tokens) // G) * G)
        self.assertEqual(finished, (None, None))
        self.assertEqual(p.sched.request_finished(req, blocks), (False, None))
        return p

    def test_prefill_saves_and_decode_loads_within_codec_error(self):
        ns = "vllm-test/save-load"
        tokens = list(range(1000, 1300))  # 2 full tiles + a 44-token tail
        k, v = prompt_kv(1, len(tokens))
        self.prefill("p1", tokens, k, v, ns)
        chain = kvtier.chain_hashes(ns, np.array(tokens, np.int32), G)
        client = kvtier.Client(endpoints=[self.server.endpoint])
        self.assertEqual(client.lookup(ns, 0, chain, G), 2)

        d = Instance(self.server.endpoint, "kv_consumer", kvtier_namespace=ns)
        req = vt.Request("d1", tokens + [7])  # the decode instance sees the same prompt
        self.assertEqual(d.sched.get_num_new_matched_tokens(req, 0), (256, False))
        blocks = list(range(40, 40 + 19))  # different physical blocks than the prefill's
        d.sched.update_state_after_alloc(req, vt.KVCacheBlocks(blocks), 256)
        new = vt.NewRequestData("d1", req.prompt_token_ids, (blocks,), 0)
        meta, _ = d.step([new], {"d1": len(req.prompt_token_ids) - 256})
        self.assertEqual(len(meta.loads), 1)
        self.assertEqual((meta.loads[0].start, meta.loads[0].end), (0, 256))
        self.assertEqual(meta.saves, [])  # a consumer never saves
        self.assertEqual(d.worker.get_block_ids_with_load_errors(), set())
        for layer, name in enumerate(NAMES):
            kk, vv = read_tokens(d.caches[name], blocks, 0, 256)
            ref_k, ref_v = k[layer, :256].astype(np.float32), v[layer, :256].astype(np.float32)
            # Tile 0 is the FP16 sink block: exact up to the rotation's fp16 rounding.
            self.assertLess(rel(kk[:G], ref_k[:G]), 2e-3)
            self.assertLess(rel(vv[:G], ref_v[:G]), 2e-3)
            # Tile 1 went through the 4-bit-key / 2-bit-value codec.
            self.assertLess(rel(kk[G:], ref_k[G:]), 0.15)
            self.assertGreater(rel(kk[G:], ref_k[G:]), 1e-3)
            self.assertLess(rel(vv[G:], ref_v[G:]), 0.6)
            # Blocks past the loaded prefix are untouched.
            self.assertTrue(np.all(d.caches[name][:, blocks[16]] == np.float16(-7.0)))

    def test_locally_cached_prefix_is_not_overwritten(self):
        ns = "vllm-test/partial"
        tokens = list(range(5000, 5300))
        k, v = prompt_kv(2, len(tokens))
        self.prefill("p2", tokens, k, v, ns)
        d = Instance(self.server.endpoint, "kv_both", kvtier_namespace=ns)
        req = vt.Request("d2", tokens)
        # vLLM's own prefix cache already holds the first 128 tokens.
        self.assertEqual(d.sched.get_num_new_matched_tokens(req, 128), (128, False))
        blocks = list(range(20, 39))
        d.sched.update_state_after_alloc(req, vt.KVCacheBlocks(blocks), 128)
        new = vt.NewRequestData("d2", tokens, (blocks,), 128)
        meta, _ = d.step([new], {"d2": len(tokens) - 256})
        self.assertEqual((meta.loads[0].start, meta.loads[0].end), (128, 256))
        for name in NAMES:
            self.assertTrue(np.all(d.caches[name][:, blocks[:8]] == np.float16(-7.0)))
            self.assertFalse(np.any(d.caches[name][:, blocks[8:16]] == np.float16(-7.0)))

    def test_whole_prompt_hit_leaves_one_block_to_compute(self):
        ns = "vllm-test/whole"
        tokens = list(range(9000, 9256))  # exactly two tiles
        k, v = prompt_kv(3, len(tokens))
        self.prefill("p3", tokens, k, v, ns)
        d = Instance(self.server.endpoint, "kv_consumer", kvtier_namespace=ns)
        self.assertEqual(d.sched.get_num_new_matched_tokens(vt.Request("d3", tokens), 0),
                         (128, False))

    def test_failed_load_leaves_cache_and_reports_blocks(self):
        ns = "vllm-test/failed"
        tokens = list(range(20000, 20300))
        k, v = prompt_kv(4, len(tokens))
        self.prefill("p4", tokens, k, v, ns)
        d = Instance(self.server.endpoint, "kv_consumer", kvtier_namespace=ns)
        req = vt.Request("d4", tokens)
        self.assertEqual(d.sched.get_num_new_matched_tokens(req, 0), (256, False))
        blocks = list(range(10, 29))
        d.sched.update_state_after_alloc(req, vt.KVCacheBlocks(blocks), 256)
        # The second tile disappears between the scheduler's Lookup and the worker's load.
        chain = kvtier.chain_hashes(ns, np.array(tokens, np.int32), G)
        kvtier.Client(endpoints=[self.server.endpoint]).delete(ns, 0, chain[1:2])
        new = vt.NewRequestData("d4", tokens, (blocks,), 0)
        d.step([new], {"d4": len(tokens) - 256})
        self.assertEqual(d.worker.get_block_ids_with_load_errors(), set(blocks[8:16]))
        self.assertEqual(d.worker.get_block_ids_with_load_errors(), set())  # reported once
        for name in NAMES:
            self.assertFalse(np.any(d.caches[name][:, blocks[:8]] == np.float16(-7.0)))
            self.assertTrue(np.all(d.caches[name][:, blocks[8:16]] == np.float16(-7.0)))

    def test_chunked_prefill_saves_when_the_prompt_completes(self):
        ns = "vllm-test/chunked"
        tokens = list(range(30000, 30260))
        k, v = prompt_kv(5, len(tokens))
        p = Instance(self.server.endpoint, "kv_producer", kvtier_namespace=ns)
        blocks = list(range(0, 17))
        new = vt.NewRequestData("c1", tokens, (blocks[:8],), 0)
        meta, _ = p.step([new], {"c1": 128}, write_prompt(blocks, k, v))
        self.assertEqual(meta.saves, [])  # prompt not complete yet
        so = vt.SchedulerOutput(
            scheduled_cached_reqs=vt.CachedRequestData(["c1"], [(blocks[8:],)], [128]),
            num_scheduled_tokens={"c1": 132})
        meta = p.sched.build_connector_meta(so)
        self.assertEqual(len(meta.saves), 1)
        self.assertEqual(meta.saves[0].block_ids, blocks)
        p.worker.bind_connector_metadata(meta)
        p.worker.start_load_kv(None)
        for name in NAMES:
            p.worker.wait_for_layer_load(name)
            p.worker.save_kv_layer(name, p.caches[name], None)
        p.worker.wait_for_save()
        chain = kvtier.chain_hashes(ns, np.array(tokens, np.int32), G)
        self.assertEqual(kvtier.Client(endpoints=[self.server.endpoint]).lookup(ns, 0, chain, G), 2)
        # The next step does not save it again.
        so2 = vt.SchedulerOutput(
            scheduled_cached_reqs=vt.CachedRequestData(["c1"], [None], [260]),
            num_scheduled_tokens={"c1": 1})
        self.assertEqual(p.sched.build_connector_meta(so2).saves, [])

    def test_unreachable_server_is_a_miss(self):
        d = Instance("127.0.0.1:1", "kv_consumer", kvtier_timeout_s=1)
        self.assertEqual(d.sched.get_num_new_matched_tokens(vt.Request("x", list(range(300))), 0),
                         (0, False))

    def test_block_size_must_divide_the_tile(self):
        cfg = config(self.server.endpoint)
        cfg.cache_config.block_size = 48
        with self.assertRaises(ValueError):
            KvtierConnector(cfg, vt.KVConnectorRole.WORKER)


class VllmConnectorUcxTest(VllmConnectorTest):
    """Every test above again with kvtier_transport="ucx" (a server with UCX on)."""

    @classmethod
    def setUpClass(cls):
        cls.server = Server(extra_flags=[f"--ucx_port={free_port()}", "--ucx_workers=1"])
        EXTRA_DEFAULTS["kvtier_transport"] = "ucx"

    @classmethod
    def tearDownClass(cls):
        EXTRA_DEFAULTS.clear()
        cls.server.stop()

    def test_the_connector_used_ucx(self):
        self.test_prefill_saves_and_decode_loads_within_codec_error()
        self.assertRegex(self.server.metrics(),
                         r'kvtier_requests_total\{method="Put",transport="ucx",code="OK"\} [1-9]')


if __name__ == "__main__":
    unittest.main()
