"""Tests of the kvtier Python binding against a real kvtier-server process.

Run by ctest (python_client_test) with PYTHONPATH=build/client/python and
KVTIER_SERVER_BIN set; Debian's /usr/bin/python3 (numpy, unittest).
"""
import os
import tempfile
import threading
import unittest

import numpy as np

import kvtier
from _server import Server, free_port

NS = "pytest/model-x/k4v2_g128"
G = 128


def random_kv(rng, layers, tokens, heads, dim=128):
    """Post-RoPE-like KV: per-channel scales and a few outlier channels, fp16-rounded."""
    scale = rng.uniform(0.5, 1.5, size=(1, 1, heads, dim))
    scale[..., :4] *= 8.0
    k = (rng.standard_normal((layers, tokens, heads, dim)) * scale).astype(np.float16)
    v = rng.standard_normal((layers, tokens, heads, dim)).astype(np.float16)
    return k.astype(np.float32), v.astype(np.float32)


def rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


class ChainHashTest(unittest.TestCase):
    def test_chain_is_seed_then_next_per_block(self):
        tokens = np.arange(300, dtype=np.int32)
        chain = kvtier.chain_hashes(NS, tokens, G)
        self.assertEqual(len(chain), 2)
        h = kvtier.chain_seed(NS)
        for i, expected in enumerate(chain):
            h = kvtier.chain_next(h, tokens[i * G:(i + 1) * G])
            self.assertEqual(h, expected)
            self.assertEqual(len(expected), 32)
        with_tail = kvtier.chain_hashes(NS, list(range(300)), G, include_partial=True)
        self.assertEqual(with_tail[:2], chain)
        self.assertEqual(len(with_tail), 3)

    def test_namespace_and_tokens_change_the_hash(self):
        t = np.arange(G, dtype=np.int32)
        a = kvtier.chain_hashes(NS, t, G)[0]
        self.assertNotEqual(a, kvtier.chain_hashes(NS + "2", t, G)[0])
        t2 = t.copy()
        t2[-1] += 1
        self.assertNotEqual(a, kvtier.chain_hashes(NS, t2, G)[0])

    def test_bad_hash_length_is_value_error(self):
        with self.assertRaises(ValueError):
            kvtier.chain_next(b"short", [1, 2])


class CodecTest(unittest.TestCase):
    def test_tiles_roundtrip_within_codec_error(self):
        rng = np.random.default_rng(1)
        k, v = random_kv(rng, 2, G, 4)
        p = kvtier.encode_block(k, v)
        info = kvtier.payload_info(p)
        self.assertEqual(info["encoding"], "tiles")
        self.assertEqual(info["num_layers"], 2)
        self.assertEqual(info["num_kv_heads"], 4)
        self.assertEqual(info["layer_section_bytes"], 4 * 13824)
        self.assertEqual(p.nbytes, 64 + 2 * 4 * 13824)
        k2, v2 = kvtier.decode_block(p)
        self.assertEqual(k2.shape, k.shape)
        self.assertLess(rel(k2, k), 0.15)
        self.assertGreater(rel(k2, k), 1e-3)  # really quantized
        self.assertLess(rel(v2, v), 0.6)

    def test_fp16_block_is_lossless_up_to_rotation_rounding(self):
        rng = np.random.default_rng(2)
        k, v = random_kv(rng, 1, 50, 2, 64)
        p = kvtier.encode_block(k.astype(np.float16), v, encoding="fp16", tail=True)
        info = kvtier.payload_info(p)
        self.assertEqual((info["encoding"], info["token_count"], info["tail"]), ("fp16", 50, True))
        k2, v2 = kvtier.decode_block(p)
        self.assertLess(rel(k2, k), 2e-3)
        self.assertLess(rel(v2, v), 2e-3)

    def test_attend_over_compressed_matches_attention_on_decoded(self):
        rng = np.random.default_rng(3)
        k, v = random_kv(rng, 1, 2 * G, 2)
        blocks = [kvtier.encode_block(k[:, :G], v[:, :G], encoding="fp16", sink=True),
                  kvtier.encode_block(k[:, G:], v[:, G:])]
        q = rng.standard_normal((4, 128)).astype(np.float32)
        out = kvtier.attend(blocks, 0, q)
        kd = np.concatenate([kvtier.decode_block(b)[0][0] for b in blocks])
        vd = np.concatenate([kvtier.decode_block(b)[1][0] for b in blocks])
        for h in range(4):
            s = kd[:, h // 2, :] @ q[h] / np.sqrt(128)
            w = np.exp(s - s.max())
            w /= w.sum()
            np.testing.assert_allclose(out[h], w @ vd[:, h // 2, :], rtol=1e-3, atol=1e-4)

    def test_bad_inputs(self):
        k = np.zeros((1, 100, 1, 128), np.float32)
        with self.assertRaises(ValueError):
            kvtier.encode_block(k, k)  # tiles need exactly G tokens
        with self.assertRaises(ValueError):
            kvtier.encode_block(k, k, preset="k3v1")
        with self.assertRaises(kvtier.KvtierError) as e:
            kvtier.decode_block(np.zeros(100, np.uint8))
        self.assertEqual(e.exception.code, "INVALID_ARGUMENT")
        bad = np.full((1, G, 1, 128), np.nan, np.float32)
        with self.assertRaises(kvtier.KvtierError) as e:
            kvtier.encode_block(bad, bad)
        self.assertEqual(e.exception.code, "INVALID_ARGUMENT")
        rng = np.random.default_rng(4)
        kk, vv = random_kv(rng, 1, G, 1)
        p = kvtier.encode_block(kk, vv).copy()
        p[200] ^= 1
        with self.assertRaises(kvtier.KvtierError) as e:
            kvtier.decode_block(p)
        self.assertEqual(e.exception.code, "DATA_LOSS")


class ServerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server()
        cls.client = kvtier.Client(endpoints=[cls.server.endpoint], timeout_s=10)

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def blocks(self, seed, n, layers=2, heads=2):
        rng = np.random.default_rng(seed)
        tokens = rng.integers(0, 50000, size=n * G, dtype=np.int32)
        chain = kvtier.chain_hashes(NS, tokens, G)
        k, v = random_kv(rng, layers, n * G, heads)
        payloads = [kvtier.encode_block(k[:, i * G:(i + 1) * G], v[:, i * G:(i + 1) * G])
                    for i in range(n)]
        return chain, payloads

    def test_put_lookup_get_delete(self):
        c = self.client
        chain, payloads = self.blocks(10, 4)
        self.assertEqual(c.lookup(NS, 0, chain, block_tokens=G), 0)
        self.assertEqual(c.put(NS, 0, chain[:3], payloads[:3]), ["stored"] * 3)
        self.assertEqual(c.lookup(NS, 0, chain, G), 3)
        # Another part (TP rank) is a different key.
        self.assertEqual(c.lookup(NS, 1, chain, G), 0)
        got = c.get(NS, 0, chain)
        self.assertEqual(len(got), 4)
        self.assertIsNone(got[3])
        for g, p in zip(got[:3], payloads[:3]):
            self.assertEqual(g.dtype, np.uint8)
            np.testing.assert_array_equal(g, p)
        self.assertEqual(c.put(NS, 0, chain[:4], payloads[:4]),
                         ["deduplicated"] * 3 + ["stored"])
        self.assertEqual(c.delete(NS, 0, chain[1:2]), 1)
        self.assertEqual(c.lookup(NS, 0, chain, G), 1)
        stats = c.stats()
        self.assertEqual(len(stats), 1)
        self.assertEqual(stats[0]["endpoint"], self.server.endpoint)
        self.assertGreaterEqual(stats[0]["puts_stored"], 4)
        self.assertGreaterEqual(stats[0]["puts_deduplicated"], 3)
        self.assertEqual(c.health(), [(self.server.endpoint, True, "OK")])

    def test_payload_accepts_bytes_and_rejects_mismatched_lengths(self):
        chain, payloads = self.blocks(11, 1)
        self.assertEqual(self.client.put(NS, 0, chain, [payloads[0].tobytes()]), ["stored"])
        with self.assertRaises(ValueError):
            self.client.put(NS, 0, chain, [])

    def test_server_rejects_corrupt_payload(self):
        chain, payloads = self.blocks(12, 1)
        bad = payloads[0].copy()
        bad[1000] ^= 0xFF
        with self.assertRaises(kvtier.KvtierError) as e:
            self.client.put(NS, 0, chain, [bad])
        self.assertIn(e.exception.code, ("DATA_LOSS", "INVALID_ARGUMENT"))
        self.assertEqual(self.client.lookup(NS, 0, chain, G), 0)

    def test_concurrent_threads(self):
        # Several Python threads use one client at once (the GIL is released in calls).
        errors = []

        def work(seed):
            try:
                chain, payloads = self.blocks(100 + seed, 3, layers=1, heads=1)
                self.client.put(NS, 0, chain, payloads)
                got = self.client.get(NS, 0, chain)
                for g, p in zip(got, payloads):
                    np.testing.assert_array_equal(g, p)
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])

    def test_metrics_count_lookups(self):
        chain, _ = self.blocks(13, 2)
        self.client.lookup(NS, 0, chain, G)
        self.assertIn("kvtier_", self.server.metrics())


class UcxTest(unittest.TestCase):
    """transport="ucx": the same calls over the UCX data plane."""

    def test_put_get_over_ucx(self):
        server = Server(extra_flags=[f"--ucx_port={free_port()}", "--ucx_workers=1"])
        try:
            c = kvtier.Client(endpoints=[server.endpoint], transport="ucx", ucx_connections=2)
            rng = np.random.default_rng(21)
            tokens = rng.integers(0, 50000, size=6 * G, dtype=np.int32)
            chain = kvtier.chain_hashes(NS, tokens, G)
            k, v = random_kv(rng, 2, 6 * G, 2)
            payloads = [kvtier.encode_block(k[:, i * G:(i + 1) * G], v[:, i * G:(i + 1) * G])
                        for i in range(6)]
            self.assertEqual(c.put(NS, 0, chain, payloads), ["stored"] * 6)
            self.assertEqual(c.lookup(NS, 0, chain, G), 6)
            for g, p in zip(c.get(NS, 0, chain), payloads):
                np.testing.assert_array_equal(g, p)
            self.assertIn('kvtier_requests_total{method="Put",transport="ucx",code="OK"} 6',
                          server.metrics())
        finally:
            server.stop()

    def test_bad_transport_options(self):
        with self.assertRaises(ValueError):
            kvtier.Client(endpoints=["127.0.0.1:1"], transport="tcp")
        with self.assertRaises(kvtier.KvtierError) as e:
            kvtier.Client(endpoints=["127.0.0.1:1"], transport="ucx", ucx_connections=0)
        self.assertEqual(e.exception.code, "INVALID_ARGUMENT")


class FailureTest(unittest.TestCase):
    def test_unreachable_server_is_a_miss_for_lookup_and_get(self):
        c = kvtier.Client(endpoints=[f"127.0.0.1:{free_port()}"], timeout_s=1, max_attempts=1)
        chain = kvtier.chain_hashes(NS, np.arange(G, dtype=np.int32), G)
        self.assertEqual(c.lookup(NS, 0, chain, G), 0)
        self.assertEqual(c.get(NS, 0, chain), [None])
        rng = np.random.default_rng(5)
        k, v = random_kv(rng, 1, G, 1)
        with self.assertRaises(kvtier.KvtierError) as e:
            c.put(NS, 0, chain, [kvtier.encode_block(k, v)])
        self.assertIn(e.exception.code, ("UNAVAILABLE", "DEADLINE_EXCEEDED"))

    def test_tokens(self):
        with tempfile.NamedTemporaryFile("w", suffix=".tokens", delete=False) as f:
            f.write("s3cret rw pytest/\n")
            token_file = f.name
        server = Server(extra_flags=[f"--token_file={token_file}"])
        try:
            chain = kvtier.chain_hashes(NS, np.arange(G, dtype=np.int32), G)
            anonymous = kvtier.Client(endpoints=[server.endpoint], max_attempts=1)
            with self.assertRaises(kvtier.KvtierError) as e:
                anonymous.lookup(NS, 0, chain, G)
            self.assertEqual(e.exception.code, "UNAUTHENTICATED")
            ok = kvtier.Client(endpoints=[server.endpoint], token="s3cret")
            self.assertEqual(ok.lookup(NS, 0, chain, G), 0)
            with self.assertRaises(kvtier.KvtierError) as e:
                ok.lookup("other/ns", 0, chain, G)
            self.assertEqual(e.exception.code, "PERMISSION_DENIED")
        finally:
            server.stop()
            os.unlink(token_file)

    def test_bad_options(self):
        with self.assertRaises(kvtier.KvtierError) as e:
            kvtier.Client(endpoints=[])
        self.assertEqual(e.exception.code, "INVALID_ARGUMENT")
        with self.assertRaises(ValueError):
            kvtier.Client(endpoints=["127.0.0.1:1"], timeout_s=0)


if __name__ == "__main__":
    unittest.main()
