#include "tools/codec_npy.h"

#include <cstring>
#include <fstream>
#include <iterator>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/cpu/half.h"

namespace kvtier::tools {
namespace {

using kernels::cpu::FloatToHalf;
using kernels::cpu::HalfToFloat;

absl::Status Bad(const std::string& name, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat(name, ": not a valid .npy file: ", why));
}

// Value of `key` in the header dict, as the raw text up to the next top-level ',' or '}'.
bool DictValue(const std::string& h, const std::string& key, std::string* out) {
  const std::string k1 = "'" + key + "'";
  size_t p = h.find(k1);
  if (p == std::string::npos) return false;
  p = h.find(':', p + k1.size());
  if (p == std::string::npos) return false;
  ++p;
  while (p < h.size() && h[p] == ' ') ++p;
  size_t e = p;
  int depth = 0;
  while (e < h.size()) {
    const char c = h[e];
    if (c == '(') ++depth;
    if (c == ')') --depth;
    if (depth == 0 && (c == ',' || c == '}')) break;
    ++e;
  }
  if (depth != 0 || e >= h.size()) return false;
  *out = h.substr(p, e - p);
  while (!out->empty() && out->back() == ' ') out->pop_back();
  return true;
}

}  // namespace

int64_t NpyArray::size() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string NpyArray::ShapeString() const {
  return absl::StrCat("(", absl::StrJoin(shape, ", "), ")");
}

absl::StatusOr<NpyArray> ParseNpy(absl::Span<const uint8_t> bytes, const std::string& name) {
  static const uint8_t kMagic[] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
  if (bytes.size() < 10 || std::memcmp(bytes.data(), kMagic, 6) != 0) {
    return Bad(name, "missing the \\x93NUMPY magic");
  }
  const int major = bytes[6];
  size_t header_len = 0, header_start = 0;
  if (major == 1) {
    header_len = bytes[8] | (size_t{bytes[9]} << 8);
    header_start = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) return Bad(name, "truncated header");
    header_len =
        bytes[8] | (size_t{bytes[9]} << 8) | (size_t{bytes[10]} << 16) | (size_t{bytes[11]} << 24);
    header_start = 12;
  } else {
    return Bad(name, absl::StrCat("unsupported format version ", major));
  }
  if (header_len > bytes.size() - header_start) return Bad(name, "truncated header");
  const std::string h(reinterpret_cast<const char*>(bytes.data() + header_start), header_len);
  std::string descr, fortran, shape_text;
  if (!DictValue(h, "descr", &descr) || !DictValue(h, "fortran_order", &fortran) ||
      !DictValue(h, "shape", &shape_text)) {
    return Bad(name, "header lacks descr, fortran_order or shape");
  }
  NpyArray a;
  if (descr == "'<f2'" || descr == "'|f2'") {
    a.dtype = NpyDtype::kFloat16;
  } else if (descr == "'<f4'") {
    a.dtype = NpyDtype::kFloat32;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        name, ": unsupported dtype ", descr, ": expected float16 ('<f2') or float32 ('<f4')"));
  }
  if (fortran != "False") {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": Fortran-ordered arrays are not supported (use C order)"));
  }
  if (shape_text.size() < 2 || shape_text.front() != '(' || shape_text.back() != ')') {
    return Bad(name, absl::StrCat("bad shape ", shape_text));
  }
  std::string inner = shape_text.substr(1, shape_text.size() - 2);
  size_t pos = 0;
  while (pos < inner.size()) {
    while (pos < inner.size() && (inner[pos] == ' ' || inner[pos] == ',')) ++pos;
    if (pos >= inner.size()) break;
    size_t e = pos;
    int64_t v = 0;
    while (e < inner.size() && inner[e] >= '0' && inner[e] <= '9') {
      v = v * 10 + (inner[e] - '0');
      if (v > (int64_t{1} << 40)) return Bad(name, "dimension too large");
      ++e;
    }
    if (e == pos) return Bad(name, absl::StrCat("bad shape ", shape_text));
    a.shape.push_back(v);
    pos = e;
  }
  const size_t elem = a.dtype == NpyDtype::kFloat16 ? 2 : 4;
  const int64_t count = a.size();
  const size_t data_start = header_start + header_len;
  const size_t available = bytes.size() - data_start;
  if (count < 0 || static_cast<uint64_t>(count) > available / elem) {
    return Bad(name, absl::StrCat("shape ", a.ShapeString(), " needs ", count * elem,
                                  " data bytes, file has ", available));
  }
  if (static_cast<uint64_t>(count) * elem != available) {
    return Bad(name, absl::StrCat("shape ", a.ShapeString(), " needs ", count * elem,
                                  " data bytes, file has ", available, " (trailing bytes)"));
  }
  a.data.resize(count);
  const uint8_t* p = bytes.data() + data_start;
  for (int64_t i = 0; i < count; ++i) {
    if (elem == 2) {
      a.data[i] = HalfToFloat(static_cast<uint16_t>(p[2 * i] | (p[2 * i + 1] << 8)));
    } else {
      uint32_t u = 0;
      for (int b = 0; b < 4; ++b) u |= static_cast<uint32_t>(p[4 * i + b]) << (8 * b);
      std::memcpy(&a.data[i], &u, 4);
    }
  }
  return a;
}

absl::StatusOr<std::vector<uint8_t>> ReadFileBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open file"));
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)),
                             std::istreambuf_iterator<char>());
  if (in.bad()) return absl::DataLossError(absl::StrCat(path, ": read error"));
  return bytes;
}

absl::Status WriteFileBytes(const std::string& path, absl::Span<const uint8_t> bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::InternalError(absl::StrCat(path, ": cannot open for writing"));
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) return absl::InternalError(absl::StrCat(path, ": write failed"));
  return absl::OkStatus();
}

absl::StatusOr<NpyArray> ReadNpy(const std::string& path) {
  absl::StatusOr<std::vector<uint8_t>> bytes = ReadFileBytes(path);
  if (!bytes.ok()) return bytes.status();
  return ParseNpy(*bytes, path);
}

std::vector<uint8_t> SerializeNpy(absl::Span<const int64_t> shape, const float* data,
                                  NpyDtype dtype) {
  std::string shape_text = "(";
  int64_t count = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    absl::StrAppend(&shape_text, shape[i], shape.size() == 1 || i + 1 < shape.size() ? "," : "");
    if (i + 1 < shape.size()) shape_text += " ";
    count *= shape[i];
  }
  shape_text += ")";
  std::string header = absl::StrCat("{'descr': '", dtype == NpyDtype::kFloat16 ? "<f2" : "<f4",
                                    "', 'fortran_order': False, 'shape': ", shape_text, ", }");
  const size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header += '\n';
  std::vector<uint8_t> out = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0};
  out.push_back(static_cast<uint8_t>(header.size()));
  out.push_back(static_cast<uint8_t>(header.size() >> 8));
  out.insert(out.end(), header.begin(), header.end());
  const size_t elem = dtype == NpyDtype::kFloat16 ? 2 : 4;
  const size_t start = out.size();
  out.resize(start + count * elem);
  uint8_t* p = out.data() + start;
  for (int64_t i = 0; i < count; ++i) {
    if (elem == 2) {
      const uint16_t h = FloatToHalf(data[i]);
      p[2 * i] = static_cast<uint8_t>(h);
      p[2 * i + 1] = static_cast<uint8_t>(h >> 8);
    } else {
      uint32_t u;
      std::memcpy(&u, &data[i], 4);
      for (int b = 0; b < 4; ++b) p[4 * i + b] = static_cast<uint8_t>(u >> (8 * b));
    }
  }
  return out;
}

absl::Status WriteNpy(const std::string& path, absl::Span<const int64_t> shape, const float* data,
                      NpyDtype dtype) {
  return WriteFileBytes(path, SerializeNpy(shape, data, dtype));
}

}  // namespace kvtier::tools
