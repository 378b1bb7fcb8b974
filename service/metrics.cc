#include "service/metrics.h"

#include <cmath>
#include <cstdio>

#include "absl/strings/str_cat.h"

namespace kvtier::service {

std::string EscapeLabelValue(absl::string_view v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    switch (c) {
      case '\\':
        out += "\\\\";
        break;
      case '"':
        out += "\\\"";
        break;
      case '\n':
        out += "\\n";
        break;
      default:
        out += c;
    }
  }
  return out;
}

namespace {
std::string EscapeHelp(absl::string_view v) {
  std::string out;
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}
}  // namespace

std::string FormatValue(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (v == std::floor(v) && std::fabs(v) < 9.007199254740992e15) {
    return absl::StrCat(static_cast<int64_t>(v));
  }
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.17g", v);
  return buf;
}

Family::Family(std::string name, std::string help, std::string type,
               std::vector<std::string> label_names)
    : name_(std::move(name)),
      help_(std::move(help)),
      type_(std::move(type)),
      label_names_(std::move(label_names)) {}

std::string Family::LabelString(const std::vector<std::string>& values,
                                absl::string_view extra_name, absl::string_view extra_value) const {
  if (label_names_.empty() && extra_name.empty()) return "";
  std::string out = "{";
  for (size_t i = 0; i < label_names_.size(); ++i) {
    if (i) out += ',';
    absl::StrAppend(&out, label_names_[i], "=\"", EscapeLabelValue(values[i]), "\"");
  }
  if (!extra_name.empty()) {
    if (!label_names_.empty()) out += ',';
    absl::StrAppend(&out, extra_name, "=\"", EscapeLabelValue(extra_value), "\"");
  }
  out += '}';
  return out;
}

std::vector<std::string> Family::Key(LabelValues values) const {
  std::vector<std::string> key;
  key.reserve(label_names_.size());
  for (absl::string_view v : values) key.emplace_back(v);
  // A wrong number of values is a programmer error; pad/truncate rather than crash.
  key.resize(label_names_.size());
  return key;
}

void Family::RenderHeader(std::string* out) const {
  absl::StrAppend(out, "# HELP ", name_, " ", EscapeHelp(help_), "\n# TYPE ", name_, " ", type_,
                  "\n");
}

void ScalarFamily::Add(LabelValues values, double v) {
  std::vector<std::string> key = Key(values);
  absl::MutexLock l(&mu_);
  series_[std::move(key)] += v;
}

void ScalarFamily::Set(LabelValues values, double v) {
  std::vector<std::string> key = Key(values);
  absl::MutexLock l(&mu_);
  series_[std::move(key)] = v;
}

double ScalarFamily::Value(LabelValues values) const {
  std::vector<std::string> key = Key(values);
  absl::MutexLock l(&mu_);
  auto it = series_.find(key);
  return it == series_.end() ? 0 : it->second;
}

void ScalarFamily::Render(std::string* out) const {
  RenderHeader(out);
  absl::MutexLock l(&mu_);
  for (const auto& [key, v] : series_) {
    absl::StrAppend(out, name_, LabelString(key), " ", FormatValue(v), "\n");
  }
}

HistogramFamily::HistogramFamily(std::string name, std::string help,
                                 std::vector<std::string> label_names, std::vector<double> bounds)
    : Family(std::move(name), std::move(help), "histogram", std::move(label_names)),
      bounds_(std::move(bounds)) {}

void HistogramFamily::Observe(LabelValues values, double x) {
  std::vector<std::string> key = Key(values);
  size_t b = 0;
  while (b < bounds_.size() && x > bounds_[b]) ++b;
  absl::MutexLock l(&mu_);
  Series& s = series_[std::move(key)];
  if (s.buckets.empty()) s.buckets.assign(bounds_.size() + 1, 0);
  s.buckets[b]++;
  s.sum += x;
  s.count++;
}

uint64_t HistogramFamily::Count(LabelValues values) const {
  std::vector<std::string> key = Key(values);
  absl::MutexLock l(&mu_);
  auto it = series_.find(key);
  return it == series_.end() ? 0 : it->second.count;
}

void HistogramFamily::Render(std::string* out) const {
  RenderHeader(out);
  absl::MutexLock l(&mu_);
  for (const auto& [key, s] : series_) {
    uint64_t cumulative = 0;
    for (size_t b = 0; b <= bounds_.size(); ++b) {
      cumulative += s.buckets[b];
      const std::string le = b < bounds_.size() ? FormatValue(bounds_[b]) : "+Inf";
      absl::StrAppend(out, name_, "_bucket", LabelString(key, "le", le), " ", cumulative, "\n");
    }
    absl::StrAppend(out, name_, "_sum", LabelString(key), " ", FormatValue(s.sum), "\n");
    absl::StrAppend(out, name_, "_count", LabelString(key), " ", s.count, "\n");
  }
}

std::vector<double> DefaultLatencyBuckets() {
  return {0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
          0.05,    0.1,    0.25,    0.5,    1,     2.5,    5,     10,   30};
}

CounterFamily& Registry::AddCounter(std::string name, std::string help,
                                    std::vector<std::string> labels) {
  auto f = std::make_unique<ScalarFamily>(std::move(name), std::move(help), "counter",
                                          std::move(labels));
  ScalarFamily& ref = *f;
  absl::MutexLock l(&mu_);
  families_.push_back(std::move(f));
  return ref;
}

GaugeFamily& Registry::AddGauge(std::string name, std::string help,
                                std::vector<std::string> labels) {
  auto f =
      std::make_unique<ScalarFamily>(std::move(name), std::move(help), "gauge", std::move(labels));
  ScalarFamily& ref = *f;
  absl::MutexLock l(&mu_);
  families_.push_back(std::move(f));
  return ref;
}

HistogramFamily& Registry::AddHistogram(std::string name, std::string help,
                                        std::vector<std::string> labels,
                                        std::vector<double> bounds) {
  auto f = std::make_unique<HistogramFamily>(std::move(name), std::move(help), std::move(labels),
                                             std::move(bounds));
  HistogramFamily& ref = *f;
  absl::MutexLock l(&mu_);
  families_.push_back(std::move(f));
  return ref;
}

std::string Registry::Render() const {
  std::string out;
  absl::MutexLock l(&mu_);
  for (const auto& f : families_) f->Render(&out);
  return out;
}

std::string NamespaceLabeler::Label(absl::string_view ns) {
  absl::MutexLock l(&mu_);
  if (seen_.contains(ns)) return std::string(ns);
  if (seen_.size() >= max_) return "_other";
  seen_.insert(std::string(ns));
  return std::string(ns);
}

}  // namespace kvtier::service
