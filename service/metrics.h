// Prometheus metrics for kvtier-server: a small registry of counter, gauge and histogram
// families with labels, rendered in the Prometheus text exposition format 0.0.4 by hand.
// The metric names are the operator contract (docs/service-contract.md).
//
//   Registry reg;
//   CounterFamily& req = reg.AddCounter("kvtier_requests_total", "Finished requests",
//                                       {"method", "transport", "code"});
//   req.Add({"Lookup", "grpc", "OK"});
//   HistogramFamily& dur = reg.AddHistogram("kvtier_request_duration_seconds", "Latency",
//                                           {"method", "transport"}, DefaultLatencyBuckets());
//   dur.Observe({"Get", "grpc"}, 0.0021);
//   std::string text = reg.Render();
//
// Thread safety: every method is safe for concurrent use. Families live as long as the
// Registry; references returned by Add* stay valid until it is destroyed.
#ifndef KVTIER_SERVICE_METRICS_H_
#define KVTIER_SERVICE_METRICS_H_

#include <cstdint>
#include <initializer_list>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace kvtier::service {

using LabelValues = std::initializer_list<absl::string_view>;

// Escapes a label value for the text format: backslash, double quote and newline.
std::string EscapeLabelValue(absl::string_view v);
// Formats a sample value: integers without a fraction, +Inf/-Inf/NaN as Prometheus spells them.
std::string FormatValue(double v);

class Family {
 public:
  Family(std::string name, std::string help, std::string type,
         std::vector<std::string> label_names);
  virtual ~Family() = default;
  const std::string& name() const { return name_; }
  // Appends # HELP, # TYPE and every series.
  virtual void Render(std::string* out) const = 0;

 protected:
  // `{a="x",b="y"}` for the label values (plus an optional extra label), "" when none.
  std::string LabelString(const std::vector<std::string>& values, absl::string_view extra_name = {},
                          absl::string_view extra_value = {}) const;
  std::vector<std::string> Key(LabelValues values) const;
  void RenderHeader(std::string* out) const;

  const std::string name_;
  const std::string help_;
  const std::string type_;
  const std::vector<std::string> label_names_;
};

// A counter or a gauge: one double per label combination.
class ScalarFamily : public Family {
 public:
  using Family::Family;
  // Adds `v` (counters: v >= 0) to the series, creating it at 0.
  void Add(LabelValues values, double v = 1);
  void Set(LabelValues values, double v);
  double Value(LabelValues values) const;
  void Render(std::string* out) const override;

 private:
  mutable absl::Mutex mu_;
  std::map<std::vector<std::string>, double> series_ ABSL_GUARDED_BY(mu_);
};
using CounterFamily = ScalarFamily;
using GaugeFamily = ScalarFamily;

class HistogramFamily : public Family {
 public:
  // `bounds`: the finite upper bounds, increasing; +Inf is implicit.
  HistogramFamily(std::string name, std::string help, std::vector<std::string> label_names,
                  std::vector<double> bounds);
  void Observe(LabelValues values, double x);
  // Observations of the series so far (for tests).
  uint64_t Count(LabelValues values) const;
  void Render(std::string* out) const override;

 private:
  struct Series {
    std::vector<uint64_t> buckets;  // per bound, not cumulative; last = +Inf
    double sum = 0;
    uint64_t count = 0;
  };
  const std::vector<double> bounds_;
  mutable absl::Mutex mu_;
  std::map<std::vector<std::string>, Series> series_ ABSL_GUARDED_BY(mu_);
};

// 50 µs .. 30 s, roughly ×2.5 per step.
std::vector<double> DefaultLatencyBuckets();

class Registry {
 public:
  CounterFamily& AddCounter(std::string name, std::string help, std::vector<std::string> labels);
  GaugeFamily& AddGauge(std::string name, std::string help, std::vector<std::string> labels);
  HistogramFamily& AddHistogram(std::string name, std::string help, std::vector<std::string> labels,
                                std::vector<double> bounds);
  // Every family in registration order.
  std::string Render() const;

 private:
  mutable absl::Mutex mu_;
  std::vector<std::unique_ptr<Family>> families_ ABSL_GUARDED_BY(mu_);
};

// Maps namespaces to label values, capped at `max_distinct` distinct values; later
// namespaces map to "_other". Thread-safe.
class NamespaceLabeler {
 public:
  explicit NamespaceLabeler(size_t max_distinct = 256) : max_(max_distinct) {}
  std::string Label(absl::string_view ns);

 private:
  const size_t max_;
  absl::Mutex mu_;
  absl::flat_hash_set<std::string> seen_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvtier::service

#endif  // KVTIER_SERVICE_METRICS_H_
