"""kvtier: Python client of the kvtier distributed KV-cache tier.

    import kvtier
    c = kvtier.Client(endpoints=["127.0.0.1:50051"], token="secret")
    chain = kvtier.chain_hashes("tenant/model/k4v2_g128", token_ids, 128)
    hit = c.lookup(ns, 0, chain, block_tokens=128)          # leading blocks present
    payload = kvtier.encode_block(k, v)                      # k, v: [layers][128][Hk][D]
    c.put(ns, 0, chain[hit:hit + 1], [payload])              # 'stored' / 'deduplicated'
    got = c.get(ns, 0, chain[:hit])                          # numpy uint8 or None each
    k_hat, v_hat = kvtier.decode_block(got[0])

`kvtier.Client(..., transport="ucx", ucx_connections=4)` moves the calls over the servers'
UCX data plane instead of gRPC (docs/ucx.md). Network calls and codec work release the GIL. Errors raise kvtier.KvtierError whose
`code` attribute is the status code name ("UNAVAILABLE", "INVALID_ARGUMENT", ...); a cache
miss is data (None / a short prefix), never an exception.
"""
from ._kvtier import (  # noqa: F401
    Client,
    KvtierError,
    attend,
    chain_hashes,
    chain_next,
    chain_seed,
    decode_block,
    encode_block,
    group_size,
    payload_info,
    record_bytes,
)

__all__ = [
    "Client",
    "KvtierError",
    "attend",
    "chain_hashes",
    "chain_next",
    "chain_seed",
    "decode_block",
    "encode_block",
    "group_size",
    "payload_info",
    "record_bytes",
]
