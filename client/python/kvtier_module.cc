// The `kvtier._kvtier` Python extension (pybind11): the C++ client (connect, lookup,
// put, get, delete, stats, health), prefix chain hashing, and the CPU codec helpers the
// vLLM connector needs (encode a block's KV into a payload, decode a payload, attend).
// numpy buffers in and out; the GIL is released during network calls and codec work.
// Errors: absl statuses become Python exceptions at this one boundary (KvtierError
// carries the status code name); a cache miss is None, never an exception.
//
// Thread safety: a Client may be used from several Python threads at once.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "kernels/cpu/codec.h"
#include "kernels/cpu/half.h"
#include "kernels/format.h"
#include "kernels/payload.h"

namespace py = pybind11;

namespace kvtier::python {
namespace {

using kernels::BlockEncoding;
using kernels::ChainHash;

PyObject* g_error = nullptr;  // kvtier.KvtierError, set at module init

[[noreturn]] void Throw(const absl::Status& s) {
  py::object err = py::reinterpret_borrow<py::object>(g_error);
  py::object e =
      err(std::string(absl::StatusCodeToString(s.code())) + ": " + std::string(s.message()));
  e.attr("code") = std::string(absl::StatusCodeToString(s.code()));
  PyErr_SetObject(g_error, e.ptr());
  throw py::error_already_set();
}

ChainHash ToHash(const py::handle& h) {
  std::string_view bytes;
  std::string tmp;
  if (py::isinstance<py::bytes>(h)) {
    tmp = h.cast<std::string>();
  } else {
    py::buffer_info info = py::reinterpret_borrow<py::buffer>(h).request();
    tmp.assign(static_cast<const char*>(info.ptr), info.size * info.itemsize);
  }
  if (tmp.size() != 32) {
    throw py::value_error(absl::StrCat("a chain hash is 32 bytes, got ", tmp.size()));
  }
  ChainHash out;
  std::memcpy(out.data(), tmp.data(), 32);
  return out;
}

std::vector<ChainHash> ToChain(const py::iterable& hashes) {
  std::vector<ChainHash> out;
  for (py::handle h : hashes) out.push_back(ToHash(h));
  return out;
}

py::bytes HashBytes(const ChainHash& h) {
  return py::bytes(reinterpret_cast<const char*>(h.data()), h.size());
}

std::vector<int32_t> ToTokens(const py::handle& tokens) {
  py::array_t<int32_t, py::array::c_style | py::array::forcecast> a =
      py::array_t<int32_t, py::array::c_style | py::array::forcecast>::ensure(tokens);
  if (!a) throw py::value_error("tokens must be a sequence of integers");
  return std::vector<int32_t>(a.data(), a.data() + a.size());
}

// Moves a byte vector into a numpy uint8 array without copying.
py::array_t<uint8_t> ToArray(std::vector<uint8_t>&& bytes) {
  auto* owned = new std::vector<uint8_t>(std::move(bytes));
  py::capsule free_when_done(owned, [](void* p) { delete static_cast<std::vector<uint8_t>*>(p); });
  return py::array_t<uint8_t>({static_cast<py::ssize_t>(owned->size())}, {1}, owned->data(),
                              free_when_done);
}

class PyClient {
 public:
  PyClient(std::vector<std::string> endpoints, std::string dns_name, std::string token, bool tls,
           std::string tls_ca_file, std::string tls_cert_file, std::string tls_key_file,
           std::string tls_server_name, double timeout_s, int max_attempts,
           const std::string& transport, int ucx_connections) {
    client::ClientOptions o;
    if (transport == "grpc") {
      o.transport = client::TransportKind::kGrpc;
    } else if (transport == "ucx") {
      o.transport = client::TransportKind::kUcx;
    } else {
      throw py::value_error("transport must be \"grpc\" or \"ucx\", not \"" + transport + "\"");
    }
    o.ucx_connections = ucx_connections;  // 1..64, else Create's INVALID_ARGUMENT
    o.endpoints = std::move(endpoints);
    o.dns_name = std::move(dns_name);
    o.token = std::move(token);
    o.tls = tls;
    o.tls_ca_file = std::move(tls_ca_file);
    o.tls_cert_file = std::move(tls_cert_file);
    o.tls_key_file = std::move(tls_key_file);
    o.tls_server_name = std::move(tls_server_name);
    if (!(timeout_s > 0)) throw py::value_error("timeout_s must be > 0");
    o.timeout = absl::Seconds(timeout_s);
    if (max_attempts < 1) throw py::value_error("max_attempts must be >= 1");
    o.max_attempts = max_attempts;
    absl::StatusOr<std::unique_ptr<client::Client>> c;
    {
      py::gil_scoped_release release;
      c = client::Client::Create(o);
    }
    if (!c.ok()) Throw(c.status());
    client_ = std::move(*c);
  }

  size_t Lookup(const std::string& ns, uint32_t part, const py::iterable& hashes,
                uint32_t block_tokens) {
    std::vector<ChainHash> chain = ToChain(hashes);
    absl::StatusOr<size_t> r;
    {
      py::gil_scoped_release release;
      r = client_->Lookup(ns, part, chain, block_tokens);
    }
    if (!r.ok()) Throw(r.status());
    return *r;
  }

  std::vector<std::string> Put(const std::string& ns, uint32_t part, const py::sequence& hashes,
                               const py::sequence& payloads) {
    if (hashes.size() != payloads.size()) {
      throw py::value_error("hashes and payloads differ in length");
    }
    std::vector<ChainHash> chain = ToChain(hashes);
    // Buffer views keep the payload objects' memory pinned while the GIL is released.
    std::vector<py::buffer_info> views;
    std::vector<client::PutItem> items;
    for (size_t i = 0; i < payloads.size(); ++i) {
      py::buffer b = py::reinterpret_borrow<py::buffer>(payloads[i]);
      views.push_back(b.request());
      const auto& v = views.back();
      items.push_back({chain[i], absl::Span<const uint8_t>(static_cast<const uint8_t*>(v.ptr),
                                                           v.size * v.itemsize)});
    }
    absl::StatusOr<std::vector<client::PutOutcome>> r;
    {
      py::gil_scoped_release release;
      r = client_->Put(ns, part, items);
    }
    if (!r.ok()) Throw(r.status());
    std::vector<std::string> out;
    for (auto o : *r) out.push_back(o == client::PutOutcome::kStored ? "stored" : "deduplicated");
    return out;
  }

  // One entry per hash: a numpy uint8 array (validated payload) or None (miss).
  py::list Get(const std::string& ns, uint32_t part, const py::iterable& hashes) {
    std::vector<ChainHash> chain = ToChain(hashes);
    std::vector<client::BlockResult> r;
    {
      py::gil_scoped_release release;
      r = client_->Get(ns, part, chain);
    }
    py::list out;
    for (auto& b : r) {
      if (b.hit) {
        out.append(ToArray(std::move(b.payload)));
      } else {
        out.append(py::none());
      }
    }
    return out;
  }

  size_t Delete(const std::string& ns, uint32_t part, const py::iterable& hashes) {
    std::vector<ChainHash> chain = ToChain(hashes);
    absl::StatusOr<size_t> r;
    {
      py::gil_scoped_release release;
      r = client_->Delete(ns, part, chain);
    }
    if (!r.ok()) Throw(r.status());
    return *r;
  }

  py::list Stats() {
    std::vector<client::Client::EndpointStats> r;
    {
      py::gil_scoped_release release;
      r = client_->Stats();
    }
    py::list out;
    for (auto& e : r) {
      py::dict d;
      d["endpoint"] = e.endpoint;
      if (!e.stats.ok()) {
        d["error"] = e.stats.status().ToString();
      } else {
        const auto& s = *e.stats;
        auto tier = [](const v1::TierStats& t) {
          py::dict x;
          x["blocks"] = t.blocks();
          x["bytes"] = t.bytes();
          x["capacity_bytes"] = t.capacity_bytes();
          x["hits"] = t.hits();
          x["misses"] = t.misses();
          x["evictions"] = t.evictions();
          return x;
        };
        d["memory"] = tier(s.memory());
        d["disk"] = tier(s.disk());
        d["puts_stored"] = s.puts_stored();
        d["puts_deduplicated"] = s.puts_deduplicated();
        d["puts_rejected"] = s.puts_rejected();
        d["dedup_bytes_saved"] = s.dedup_bytes_saved();
        d["corrupt_dropped"] = s.corrupt_dropped();
        d["server_version"] = s.server_version();
        d["uptime_seconds"] = s.uptime_seconds();
      }
      out.append(d);
    }
    return out;
  }

  // [(endpoint, ok, message)]
  std::vector<std::tuple<std::string, bool, std::string>> Health() {
    std::vector<std::pair<std::string, absl::Status>> r;
    {
      py::gil_scoped_release release;
      r = client_->Health();
    }
    std::vector<std::tuple<std::string, bool, std::string>> out;
    for (auto& [ep, s] : r) out.emplace_back(ep, s.ok(), s.ToString());
    return out;
  }

  std::vector<std::string> Endpoints() const {
    std::vector<std::string> out;
    for (size_t i = 0; i < client_->num_endpoints(); ++i) out.push_back(client_->endpoint(i));
    return out;
  }

 private:
  std::unique_ptr<client::Client> client_;
};

kernels::Preset ParsePreset(const std::string& name) {
  auto p = kernels::PresetFromName(name);
  if (!p) throw py::value_error("unknown preset " + name);
  return *p;
}

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;

// k, v: [layers][tokens][kv_heads][head_dim] (any float dtype, converted to fp32), NOT
// rotated. encoding "tiles" (tokens == G) or "fp16" (1..G tokens; sink / tail).
py::array_t<uint8_t> EncodeBlock(const py::handle& k_in, const py::handle& v_in,
                                 const std::string& preset_name, const std::string& encoding,
                                 bool sink, bool tail) {
  FloatArray k = FloatArray::ensure(k_in), v = FloatArray::ensure(v_in);
  if (!k || !v) throw py::value_error("k and v must be float arrays");
  if (k.ndim() != 4 || v.ndim() != 4) {
    throw py::value_error("k and v must be [layers][tokens][kv_heads][head_dim]");
  }
  for (int i = 0; i < 4; ++i) {
    if (k.shape(i) != v.shape(i)) throw py::value_error("k and v shapes differ");
  }
  const kernels::Preset preset = ParsePreset(preset_name);
  const int layers = static_cast<int>(k.shape(0)), tokens = static_cast<int>(k.shape(1));
  const int heads = static_cast<int>(k.shape(2)), dim = static_cast<int>(k.shape(3));
  const int g = kernels::GetPresetInfo(preset).group_size;
  if (!kernels::IsSupportedHeadDim(dim)) throw py::value_error("head_dim must be 64, 128 or 256");
  if (layers < 1 || layers > static_cast<int>(kernels::kMaxLayers) || heads < 1 ||
      heads > static_cast<int>(kernels::kMaxKvHeads)) {
    throw py::value_error("layers must be 1..1024 and kv_heads 1..256");
  }
  kernels::PayloadHeader h;
  const uint8_t flags =
      static_cast<uint8_t>((sink ? kernels::kFlagSink : 0) | (tail ? kernels::kFlagTail : 0));
  if (encoding == "tiles") {
    if (tokens != g) throw py::value_error(absl::StrCat("a tiles block holds ", g, " tokens"));
    h = kernels::MakeTilesHeader(preset, dim, layers, heads, flags);
  } else if (encoding == "fp16") {
    if (tokens < 1 || tokens > g)
      throw py::value_error(absl::StrCat("an fp16 block holds 1..", g, " tokens"));
    h = kernels::MakeFp16Header(preset, dim, layers, heads, tokens, flags);
  } else {
    throw py::value_error("encoding must be 'tiles' or 'fp16'");
  }
  std::vector<uint8_t> bytes(h.total_bytes());
  absl::Status status;
  const float* kp = k.data();
  const float* vp = v.data();
  {
    py::gil_scoped_release release;
    kernels::EncodeHeader(h, bytes.data());
    const kernels::TileLayout layout = kernels::MakeTileLayout(preset, dim);
    const size_t per_layer = static_cast<size_t>(tokens) * heads * dim;
    for (int l = 0; l < layers && status.ok(); ++l) {
      uint8_t* section = bytes.data() + kernels::kPayloadHeaderBytes + l * h.layer_section_bytes;
      if (h.encoding == BlockEncoding::kFp16) {
        kernels::cpu::EncodeFp16Section(dim, heads, tokens, kp + l * per_layer, vp + l * per_layer,
                                        reinterpret_cast<uint16_t*>(section));
      } else {
        std::vector<float> kh(static_cast<size_t>(g) * dim), vh(kh.size());
        for (int hd = 0; hd < heads && status.ok(); ++hd) {
          for (int t = 0; t < g; ++t) {
            const size_t src = l * per_layer + (static_cast<size_t>(t) * heads + hd) * dim;
            std::memcpy(&kh[static_cast<size_t>(t) * dim], kp + src, dim * sizeof(float));
            std::memcpy(&vh[static_cast<size_t>(t) * dim], vp + src, dim * sizeof(float));
          }
          status = kernels::cpu::EncodeTile(layout, kh.data(), vh.data(),
                                            section + hd * layout.record_bytes);
        }
      }
    }
    if (status.ok()) kernels::SealPayload(absl::MakeSpan(bytes));
  }
  if (!status.ok()) Throw(status);
  return ToArray(std::move(bytes));
}

absl::StatusOr<kernels::PayloadView> View(const py::buffer_info& info) {
  return kernels::ValidatePayload(
      absl::Span<const uint8_t>(static_cast<const uint8_t*>(info.ptr), info.size * info.itemsize));
}

// Payload -> (k, v) fp32 [layers][tokens][kv_heads][head_dim], NOT rotated.
py::tuple DecodeBlock(const py::buffer& payload) {
  py::buffer_info info = payload.request();
  auto view = View(info);
  if (!view.ok()) Throw(view.status());
  const auto& h = view->header;
  const int layers = h.num_layers, heads = h.num_kv_heads, dim = h.head_dim;
  const int tokens = static_cast<int>(h.token_count);
  py::array_t<float> k({layers, tokens, heads, dim}), v({layers, tokens, heads, dim});
  float* kp = k.mutable_data();
  float* vp = v.mutable_data();
  {
    py::gil_scoped_release release;
    const kernels::TileLayout layout = kernels::MakeTileLayout(h.preset, dim);
    const size_t per_layer = static_cast<size_t>(tokens) * heads * dim;
    std::vector<float> kr(static_cast<size_t>(tokens) * dim), vr(kr.size());
    for (int l = 0; l < layers; ++l) {
      const uint8_t* section = view->layer(l).data();
      for (int hd = 0; hd < heads; ++hd) {
        if (h.encoding == BlockEncoding::kTiles) {
          kernels::cpu::DecodeTile(layout, section + hd * layout.record_bytes, kr.data(),
                                   vr.data());
        } else {
          const uint8_t* base = section + static_cast<size_t>(hd) * 2 * tokens * dim * 2;
          for (size_t i = 0; i < kr.size(); ++i) {
            uint16_t a, b;
            std::memcpy(&a, base + 2 * i, 2);
            std::memcpy(&b, base + 2 * (kr.size() + i), 2);
            kr[i] = kernels::cpu::HalfToFloat(a);
            vr[i] = kernels::cpu::HalfToFloat(b);
          }
        }
        for (int t = 0; t < tokens; ++t) {
          float* kt = &kr[static_cast<size_t>(t) * dim];
          float* vt = &vr[static_cast<size_t>(t) * dim];
          kernels::cpu::Fwht(kt, dim);  // its own inverse: back to the model frame
          kernels::cpu::Fwht(vt, dim);
          const size_t dst = l * per_layer + (static_cast<size_t>(t) * heads + hd) * dim;
          std::memcpy(kp + dst, kt, dim * sizeof(float));
          std::memcpy(vp + dst, vt, dim * sizeof(float));
        }
      }
    }
  }
  return py::make_tuple(k, v);
}

py::dict PayloadInfo(const py::buffer& payload) {
  py::buffer_info info = payload.request();
  auto view = View(info);
  if (!view.ok()) Throw(view.status());
  const auto& h = view->header;
  py::dict d;
  d["preset"] = std::string(kernels::PresetName(h.preset));
  d["encoding"] = h.encoding == BlockEncoding::kTiles ? "tiles" : "fp16";
  d["sink"] = (h.flags & kernels::kFlagSink) != 0;
  d["tail"] = (h.flags & kernels::kFlagTail) != 0;
  d["head_dim"] = h.head_dim;
  d["group_size"] = h.group_size;
  d["num_layers"] = h.num_layers;
  d["num_kv_heads"] = h.num_kv_heads;
  d["token_count"] = h.token_count;
  d["layer_section_bytes"] = h.layer_section_bytes;
  d["total_bytes"] = h.total_bytes();
  return d;
}

// Decode attention of q [num_q_heads][D] (NOT rotated) over `layer` of the payloads, in
// order, straight from the compressed bytes. Returns out [num_q_heads][D] fp32.
py::array_t<float> Attend(const py::list& payloads, int layer, const py::handle& q_in,
                          std::optional<float> softmax_scale) {
  FloatArray q = FloatArray::ensure(q_in);
  if (!q || q.ndim() != 2) throw py::value_error("q must be [num_q_heads][head_dim]");
  std::vector<py::buffer_info> infos;
  std::vector<kernels::cpu::BlockSection> sections;
  kernels::PayloadHeader first;
  for (size_t i = 0; i < payloads.size(); ++i) {
    infos.push_back(py::reinterpret_borrow<py::buffer>(payloads[i]).request());
    auto view = View(infos.back());
    if (!view.ok()) Throw(view.status());
    const auto& h = view->header;
    if (i == 0) first = h;
    if (h.head_dim != first.head_dim || h.num_kv_heads != first.num_kv_heads ||
        h.preset != first.preset || h.num_layers != first.num_layers) {
      throw py::value_error("payloads disagree on shape or preset");
    }
    if (layer < 0 || layer >= h.num_layers) throw py::value_error("layer out of range");
    sections.push_back({h.encoding, static_cast<int>(h.token_count), view->layer(layer).data()});
  }
  if (sections.empty()) throw py::value_error("no payloads");
  const int hq = static_cast<int>(q.shape(0)), dim = static_cast<int>(q.shape(1));
  if (dim != first.head_dim) throw py::value_error("q head_dim differs from the payloads'");
  const float scale = softmax_scale.value_or(1.0f / std::sqrt(static_cast<float>(dim)));
  py::array_t<float> out({hq, dim});
  float* op = out.mutable_data();
  const float* qp = q.data();
  absl::Status s;
  {
    py::gil_scoped_release release;
    s = kernels::cpu::AttendReference(kernels::MakeTileLayout(first.preset, dim),
                                      first.num_kv_heads, sections, qp, hq, scale, op, nullptr);
  }
  if (!s.ok()) Throw(s);
  return out;
}

}  // namespace
}  // namespace kvtier::python

PYBIND11_MODULE(_kvtier, m) {
  using namespace kvtier::python;  // NOLINT: module definition scope only
  m.doc() = "kvtier: client of the distributed KV-cache tier, chain hashing, KVarN codec helpers";
  static py::exception<std::runtime_error> error(m, "KvtierError");
  g_error = error.ptr();

  py::class_<PyClient>(m, "Client")
      .def(py::init<std::vector<std::string>, std::string, std::string, bool, std::string,
                    std::string, std::string, std::string, double, int, const std::string&, int>(),
           py::arg("endpoints") = std::vector<std::string>{}, py::arg("dns_name") = "",
           py::arg("token") = "", py::arg("tls") = false, py::arg("tls_ca_file") = "",
           py::arg("tls_cert_file") = "", py::arg("tls_key_file") = "",
           py::arg("tls_server_name") = "", py::arg("timeout_s") = 10.0,
           py::arg("max_attempts") = 3, py::arg("transport") = "grpc",
           py::arg("ucx_connections") = 4)
      .def("lookup", &PyClient::Lookup, py::arg("namespace"), py::arg("part"), py::arg("hashes"),
           py::arg("block_tokens") = 0,
           "Leading blocks of the chain present in the cluster (the prefix hit).")
      .def("put", &PyClient::Put, py::arg("namespace"), py::arg("part"), py::arg("hashes"),
           py::arg("payloads"), "Stores blocks; returns 'stored' or 'deduplicated' per block.")
      .def("get", &PyClient::Get, py::arg("namespace"), py::arg("part"), py::arg("hashes"),
           "Fetches blocks: a validated payload (numpy uint8) or None per hash.")
      .def("delete", &PyClient::Delete, py::arg("namespace"), py::arg("part"), py::arg("hashes"))
      .def("stats", &PyClient::Stats)
      .def("health", &PyClient::Health)
      .def_property_readonly("endpoints", &PyClient::Endpoints);

  m.def(
      "chain_hashes",
      [](const std::string& ns, const py::handle& tokens, int block_size, bool include_partial) {
        if (block_size < 1) throw py::value_error("block_size must be >= 1");
        std::vector<int32_t> t = kvtier::python::ToTokens(tokens);
        py::list out;
        for (const auto& h : kvtier::kernels::ChainHashes(ns, t, block_size, include_partial)) {
          out.append(kvtier::python::HashBytes(h));
        }
        return out;
      },
      py::arg("namespace"), py::arg("tokens"), py::arg("block_size"),
      py::arg("include_partial") = false,
      "Chain hashes (32-byte bytes) of every full block of tokens.");
  m.def(
      "chain_seed", [](const std::string& ns) { return HashBytes(kvtier::kernels::ChainSeed(ns)); },
      py::arg("namespace"));
  m.def(
      "chain_next",
      [](const py::handle& prev, const py::handle& tokens, const py::bytes& extra) {
        std::string e = extra;
        return HashBytes(kvtier::kernels::ChainNext(
            ToHash(prev), ToTokens(tokens),
            absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(e.data()), e.size())));
      },
      py::arg("prev"), py::arg("tokens"), py::arg("extra") = py::bytes(""));
  m.def("encode_block", &EncodeBlock, py::arg("k"), py::arg("v"), py::arg("preset") = "k4v2_g128",
        py::arg("encoding") = "tiles", py::arg("sink") = false, py::arg("tail") = false,
        "Encodes k, v [layers][tokens][kv_heads][head_dim] into a block payload (numpy uint8).");
  m.def("decode_block", &DecodeBlock, py::arg("payload"),
        "Validates and decodes a payload to (k, v) fp32 [layers][tokens][kv_heads][head_dim].");
  m.def("payload_info", &PayloadInfo, py::arg("payload"));
  m.def("attend", &Attend, py::arg("payloads"), py::arg("layer"), py::arg("q"),
        py::arg("softmax_scale") = py::none(),
        "Decode attention of q over one layer of the payloads, from the compressed bytes.");
  m.def(
      "group_size",
      [](const std::string& preset) {
        return kvtier::kernels::GetPresetInfo(ParsePreset(preset)).group_size;
      },
      py::arg("preset") = "k4v2_g128");
  m.def(
      "record_bytes",
      [](const std::string& preset, int head_dim) {
        return kvtier::kernels::MakeTileLayout(ParsePreset(preset), head_dim).record_bytes;
      },
      py::arg("preset"), py::arg("head_dim"));
}
