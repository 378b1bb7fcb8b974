// The one boundary where UCX status codes become absl::Status (STYLE.md "Errors").
//
//   ucs_status_t s = ucp_worker_progress(...);
//   KVTIER_RETURN_IF_ERROR(kvtier::ucx::FromUcs(s, "ucp_worker_arm"));
//
// UCS_OK and UCS_INPROGRESS are not errors. A peer that is gone, unreachable or reset maps
// to kUnavailable (retry on another connection), a UCX timeout to kDeadlineExceeded.
//
// Thread safety: pure functions, safe to call concurrently.
#ifndef KVTIER_COMMON_UCX_UCX_STATUS_H_
#define KVTIER_COMMON_UCX_UCX_STATUS_H_

#include <ucs/type/status.h>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "common/status_macros.h"

namespace kvtier::ucx {

// The absl code a UCX status maps to (kOk for UCS_OK and UCS_INPROGRESS).
absl::StatusCode UcsToCode(ucs_status_t status);

// OK for UCS_OK / UCS_INPROGRESS; otherwise a status with UcsToCode(status) and the message
// "<what>: <ucs_status_string>".
absl::Status FromUcs(ucs_status_t status, absl::string_view what);

}  // namespace kvtier::ucx

// Returns FromUcs(expr, what) from the enclosing function when it is not OK.
#define KVTIER_UCX_RETURN_IF_ERROR(expr, what) \
  KVTIER_RETURN_IF_ERROR(::kvtier::ucx::FromUcs((expr), (what)))

#endif  // KVTIER_COMMON_UCX_UCX_STATUS_H_
