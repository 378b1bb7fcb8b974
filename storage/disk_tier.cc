#include "storage/disk_tier.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/hash/hash.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/payload.h"
#include "rocksdb/db.h"
#include "rocksdb/options.h"
#include "rocksdb/write_batch.h"
#include "storage/block_key.h"

namespace kvtier::storage {
namespace {

constexpr size_t kMetaBytes = 32;
constexpr uint32_t kMetaVersion = 1;
constexpr char kMetaFamily[] = "meta";

void PutLe(uint8_t* out, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) out[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint64_t GetLe(const uint8_t* in, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) v |= uint64_t{in[i]} << (8 * i);
  return v;
}

struct Meta {
  uint64_t bytes = 0;
  uint64_t checksum = 0;
  uint64_t tick = 0;
  uint32_t depth = 0;
};

std::string EncodeMeta(const Meta& m) {
  uint8_t b[kMetaBytes];
  PutLe(b, m.bytes, 8);
  PutLe(b + 8, m.checksum, 8);
  PutLe(b + 16, m.tick, 8);
  PutLe(b + 24, m.depth, 4);
  PutLe(b + 28, kMetaVersion, 4);
  return std::string(reinterpret_cast<const char*>(b), kMetaBytes);
}

std::optional<Meta> DecodeMeta(std::string_view s) {
  if (s.size() != kMetaBytes) return std::nullopt;
  const auto* b = reinterpret_cast<const uint8_t*>(s.data());
  if (GetLe(b + 28, 4) != kMetaVersion) return std::nullopt;
  Meta m;
  m.bytes = GetLe(b, 8);
  m.checksum = GetLe(b + 8, 8);
  m.tick = GetLe(b + 16, 8);
  m.depth = static_cast<uint32_t>(GetLe(b + 24, 4));
  if (m.bytes < kernels::kPayloadHeaderBytes || m.bytes > kernels::kMaxPayloadBytes) {
    return std::nullopt;
  }
  return m;
}

absl::Status FromRocks(const rocksdb::Status& s, std::string_view what) {
  if (s.ok()) return absl::OkStatus();
  const std::string msg = absl::StrCat("rocksdb ", std::string(what), ": ", s.ToString());
  if (s.IsCorruption()) return absl::DataLossError(msg);
  if (s.IsInvalidArgument()) return absl::InvalidArgumentError(msg);
  if (s.IsNotFound()) return absl::NotFoundError(msg);
  if (s.IsIOError() || s.IsBusy() || s.IsTryAgain() || s.IsTimedOut() || s.IsAborted() ||
      s.IsIncomplete()) {
    return absl::UnavailableError(msg);
  }
  return absl::InternalError(msg);
}

}  // namespace

absl::StatusOr<std::unique_ptr<DiskTier>> DiskTier::Open(const DiskTierOptions& options) {
  if (options.path.empty()) return absl::InvalidArgumentError("disk tier path is empty");
  if (options.capacity_bytes == 0) {
    return absl::InvalidArgumentError("disk tier capacity must be > 0");
  }
  rocksdb::DBOptions db_options;
  db_options.create_if_missing = true;
  db_options.create_missing_column_families = true;
  db_options.wal_recovery_mode = rocksdb::WALRecoveryMode::kPointInTimeRecovery;
  db_options.paranoid_checks = true;
  db_options.max_background_jobs = 2;
  db_options.info_log_level = rocksdb::InfoLogLevel::WARN_LEVEL;
  db_options.keep_log_file_num = 2;
  // The WAL is shared by both families and a WAL file lives until every family with data
  // in it has flushed; the small meta family would otherwise pin GiBs of payload WAL.
  db_options.max_total_wal_size =
      std::clamp<uint64_t>(options.capacity_bytes / 8, uint64_t{32} << 20, uint64_t{256} << 20);

  rocksdb::ColumnFamilyOptions values;
  values.compression = rocksdb::kNoCompression;  // payloads are already compressed
  values.enable_blob_files = true;
  values.min_blob_size = options.min_blob_size;
  values.blob_file_size =
      std::clamp<uint64_t>(options.capacity_bytes / 32, uint64_t{8} << 20, uint64_t{256} << 20);
  values.blob_compression_type = rocksdb::kNoCompression;
  values.enable_blob_garbage_collection = true;
  values.blob_garbage_collection_age_cutoff = 0.5;
  rocksdb::ColumnFamilyOptions meta;
  meta.compression = rocksdb::kNoCompression;

  std::vector<rocksdb::ColumnFamilyDescriptor> families = {
      {rocksdb::kDefaultColumnFamilyName, values}, {kMetaFamily, meta}};
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* db = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(db_options, options.path, families, &handles, &db);
  if (!s.ok()) return FromRocks(s, absl::StrCat("open ", options.path));
  std::unique_ptr<DiskTier> tier(new DiskTier(options, db, std::move(handles)));
  absl::Status rebuilt = tier->Rebuild(options.group_of);
  if (!rebuilt.ok()) return rebuilt;
  return tier;
}

DiskTier::DiskTier(const DiskTierOptions& options, rocksdb::DB* db,
                   std::vector<rocksdb::ColumnFamilyHandle*> handles)
    : capacity_bytes_(options.capacity_bytes),
      sync_writes_(options.sync_writes),
      quotas_(options.group_quota_bytes),
      db_(db),
      handles_(std::move(handles)) {
  gc_threshold_ = std::max<uint64_t>(capacity_bytes_ / 4, uint64_t{64} << 20);
  MutexLock lock(&index_mu_);
  group_bytes_.assign(quotas_.size(), 0);
}

DiskTier::~DiskTier() {
  {
    MutexLock lock(&gc_mu_);
    if (gc_thread_.joinable()) gc_thread_.join();
  }
  for (auto* h : handles_) db_->DestroyColumnFamilyHandle(h);
  db_->Close().PermitUncheckedError();
  delete db_;
}

absl::Status DiskTier::Rebuild(const std::function<int(std::string_view)>& group_of) {
  std::vector<std::string> bad;
  std::vector<std::string> victims;
  {
    MutexLock lock(&index_mu_);
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), handles_[1]));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      const std::string key = it->key().ToString();
      std::optional<Meta> m = DecodeMeta(std::string_view(it->value().data(), it->value().size()));
      const std::string_view ns = EncodedKeyNamespace(key);
      if (!m || (ns.empty() && key.size() != EncodedKeySize(0))) {
        bad.push_back(key);
        continue;
      }
      Entry e;
      e.bytes = m->bytes;
      e.checksum = m->checksum;
      e.group = group_of ? group_of(ns) : -1;
      if (e.group >= static_cast<int>(quotas_.size())) e.group = -1;
      e.pos = {m->tick, m->depth, next_id_++};
      max_tick_at_open_ = std::max(max_tick_at_open_, m->tick);
      AddLocked(key, e);
    }
    absl::Status st = FromRocks(it->status(), "scan meta");
    if (!st.ok()) return st;
    // Options may have shrunk since the last run.
    for (size_t g = 0; g < quotas_.size(); ++g) SelectVictimsLocked(static_cast<int>(g), &victims);
    SelectVictimsLocked(-1, &victims);
  }
  for (const auto& key : bad) {
    corrupt_dropped_.fetch_add(1, std::memory_order_relaxed);
    DeleteFromDb(key, false).IgnoreError();
  }
  for (const auto& key : victims) DeleteEvicted(key);
  return absl::OkStatus();
}

Mutex& DiskTier::StripeFor(const std::string& key) const {
  return stripes_[absl::Hash<std::string>()(key) % kStripes];
}

uint64_t DiskTier::QuotaBytes(int group) const {
  if (group < 0 || static_cast<size_t>(group) >= quotas_.size()) return 0;
  return quotas_[group];
}

uint64_t DiskTier::bytes() const {
  MutexLock lock(&index_mu_);
  return bytes_;
}

uint64_t DiskTier::blocks() const {
  MutexLock lock(&index_mu_);
  return index_.size();
}

uint64_t DiskTier::group_bytes(int group) const {
  MutexLock lock(&index_mu_);
  if (group < 0 || static_cast<size_t>(group) >= group_bytes_.size()) return 0;
  return group_bytes_[group];
}

void DiskTier::AddLocked(const std::string& key, const Entry& e) {
  auto [it, inserted] = index_.insert_or_assign(key, e);
  (void)inserted;
  order_.Add(e.pos, e.group, it->first);
  bytes_ += e.bytes;
  if (e.group >= 0) group_bytes_[e.group] += e.bytes;
}

void DiskTier::RemoveLocked(absl::flat_hash_map<std::string, Entry>::iterator it) {
  const Entry& e = it->second;
  garbage_bytes_.fetch_add(e.bytes, std::memory_order_relaxed);
  order_.Remove(e.pos, e.group);
  bytes_ -= e.bytes;
  if (e.group >= 0) group_bytes_[e.group] -= e.bytes;
  index_.erase(it);
}

void DiskTier::SelectVictimsLocked(int group, std::vector<std::string>* victims) {
  const uint64_t quota = QuotaBytes(group);
  while (quota > 0 && group_bytes_[group] > quota) {
    auto head = order_.Oldest(group);
    if (!head) break;
    std::string key = *head->second;
    RemoveLocked(index_.find(key));
    victims->push_back(std::move(key));
    evictions_.fetch_add(1, std::memory_order_relaxed);
    quota_evictions_.fetch_add(1, std::memory_order_relaxed);
  }
  while (bytes_ > capacity_bytes_) {
    auto head = order_.Oldest(-1);
    if (!head) break;
    std::string key = *head->second;
    RemoveLocked(index_.find(key));
    victims->push_back(std::move(key));
    evictions_.fetch_add(1, std::memory_order_relaxed);
  }
}

rocksdb::Status DiskTier::WriteToDb(const rocksdb::WriteOptions& wo, rocksdb::WriteBatch* batch) {
#ifdef KVTIER_STORAGE_TSAN
  // Under ThreadSanitizer only: one writer at a time, so RocksDB never merges the batches
  // of concurrent writers into a write group. That handoff is synchronized by atomics
  // inside the (uninstrumented) library, and TSan would report it as a race in our frames.
  MutexLock lock(&tsan_write_mu_);
#endif
  return db_->Write(wo, batch);
}

absl::Status DiskTier::DeleteFromDb(const std::string& key, bool sync) {
  rocksdb::WriteBatch batch;
  batch.Delete(handles_[0], key);
  batch.Delete(handles_[1], key);
  rocksdb::WriteOptions wo;
  wo.sync = sync;
  return FromRocks(WriteToDb(wo, &batch), "delete");
}

void DiskTier::DeleteEvicted(const std::string& key) {
  MutexLock stripe(&StripeFor(key));
  {
    MutexLock lock(&index_mu_);
    if (index_.contains(key)) return;  // stored again after it was picked
  }
  DeleteFromDb(key, false).IgnoreError();
}

void DiskTier::DropCorruptLocked(const std::string& key, uint64_t id) {
  corrupt_dropped_.fetch_add(1, std::memory_order_relaxed);
  {
    MutexLock lock(&index_mu_);
    auto it = index_.find(key);
    if (it == index_.end() || it->second.pos.id != id) return;  // replaced meanwhile
    RemoveLocked(it);
  }
  DeleteFromDb(key, false).IgnoreError();
}

absl::StatusOr<InsertResult> DiskTier::Put(const std::string& key,
                                           absl::Span<const uint8_t> payload, uint64_t checksum,
                                           int group, AccessStamp stamp,
                                           std::vector<std::string>* evicted) {
  if (group >= static_cast<int>(quotas_.size())) group = -1;
  std::vector<std::string> victims;
  {
    MutexLock stripe(&StripeFor(key));
    {
      MutexLock lock(&index_mu_);
      auto it = index_.find(key);
      if (it != index_.end()) {
        return it->second.checksum == checksum ? InsertResult::kPresentSame
                                               : InsertResult::kPresentDifferent;
      }
    }
    Meta m{payload.size(), checksum, stamp.tick, stamp.depth};
    rocksdb::WriteBatch batch;
    batch.Put(handles_[0], key,
              rocksdb::Slice(reinterpret_cast<const char*>(payload.data()), payload.size()));
    batch.Put(handles_[1], key, EncodeMeta(m));
    rocksdb::WriteOptions wo;
    wo.sync = sync_writes_;
    absl::Status st = FromRocks(WriteToDb(wo, &batch), "write");
    if (!st.ok()) {
      if (st.code() != absl::StatusCode::kDataLoss) st = absl::UnavailableError(st.message());
      return st;
    }
    MutexLock lock(&index_mu_);
    Entry e;
    e.bytes = payload.size();
    e.checksum = checksum;
    e.group = group;
    e.pos = {stamp.tick, stamp.depth, next_id_++};
    AddLocked(key, e);
    SelectVictimsLocked(group, &victims);
  }
  for (const auto& v : victims) DeleteEvicted(v);
  if (evicted != nullptr) evicted->insert(evicted->end(), victims.begin(), victims.end());
  AddGarbage(0);
  return InsertResult::kInserted;
}

void DiskTier::AddGarbage(uint64_t bytes) {
  if (garbage_bytes_.fetch_add(bytes, std::memory_order_relaxed) + bytes < gc_threshold_) return;
  if (gc_running_.exchange(true)) return;  // a pass is running; it will be seen next time
  garbage_bytes_.store(0, std::memory_order_relaxed);
  MutexLock lock(&gc_mu_);
  if (gc_thread_.joinable()) gc_thread_.join();  // the previous pass has finished
  gc_passes_.fetch_add(1, std::memory_order_relaxed);
  gc_thread_ = std::thread([this] { CollectGarbage(); });
}

void DiskTier::CollectGarbage() {
  // Tombstones of deleted keys sit in the (rarely full) memtable; flush them, then compact
  // with forced blob GC so blob files whose blobs are dead (or mostly dead) are dropped.
  rocksdb::FlushOptions fo;
  fo.wait = true;
  db_->Flush(fo, handles_).PermitUncheckedError();
  rocksdb::CompactRangeOptions co;
  co.blob_garbage_collection_policy = rocksdb::BlobGarbageCollectionPolicy::kForce;
  co.blob_garbage_collection_age_cutoff = 0.5;
  co.bottommost_level_compaction = rocksdb::BottommostLevelCompaction::kForce;
  db_->CompactRange(co, handles_[0], nullptr, nullptr).PermitUncheckedError();
  gc_running_.store(false);
}

absl::StatusOr<Payload> DiskTier::Get(const std::string& key, uint64_t tick) {
  // Reads run without the key's stripe lock, so a Delete and a Put of another payload
  // under the same key can land between the index lookup and the value read. A value that
  // fails validation is therefore read again under the stripe lock, which Put and Delete
  // hold: only that read can declare the block corrupt.
  ReadResult r = ReadOnce(key, tick);
  if (r.kind != ReadResult::kInvalid) return std::move(r.result);
  MutexLock stripe(&StripeFor(key));
  r = ReadOnce(key, /*tick=*/0);
  if (r.kind != ReadResult::kInvalid) return std::move(r.result);
  DropCorruptLocked(key, r.id);
  return std::move(r.result);
}

DiskTier::ReadResult DiskTier::ReadOnce(const std::string& key, uint64_t tick) {
  uint64_t id = 0;
  uint64_t checksum = 0;
  {
    MutexLock lock(&index_mu_);
    auto it = index_.find(key);
    if (it == index_.end()) return {ReadResult::kDone, 0, Payload()};
    Entry& e = it->second;
    id = e.pos.id;
    checksum = e.checksum;
    if (tick > 0 && tick != e.pos.tick) {
      const EvictionPos from = e.pos;
      e.pos.tick = tick;
      order_.Move(from, e.pos, e.group);
    }
  }
  rocksdb::PinnableSlice value;
  rocksdb::ReadOptions ro;
  // The value is validated end to end below (XXH3 of header and body, and the header
  // checksum recorded in meta), which also catches a misdirected blob read; RocksDB's own
  // CRC32C pass over multi-MB blobs would only repeat that check (and is the software
  // CRC in portable builds such as Debian's).
  ro.verify_checksums = false;
  rocksdb::Status s = db_->Get(ro, handles_[0], key, &value);
  if (s.IsNotFound()) {
    // Deleted or evicted between the index check and the read: a miss.
    MutexLock lock(&index_mu_);
    auto it = index_.find(key);
    if (it != index_.end() && it->second.pos.id == id) RemoveLocked(it);
    return {ReadResult::kDone, id, Payload()};
  }
  if (s.IsCorruption()) {
    return {ReadResult::kInvalid, id,
            absl::DataLossError(absl::StrCat("disk block corrupt (dropped): ", s.ToString()))};
  }
  if (!s.ok()) return {ReadResult::kDone, id, FromRocks(s, "get")};
  const absl::Span<const uint8_t> bytes(reinterpret_cast<const uint8_t*>(value.data()),
                                        value.size());
  absl::StatusOr<kernels::PayloadView> view = kernels::ValidatePayload(bytes);
  if (!view.ok() || kernels::Xxh3(bytes.first(kernels::kPayloadHeaderBytes)) != checksum) {
    return {ReadResult::kInvalid, id,
            absl::DataLossError(absl::StrCat("disk block failed validation (dropped): ",
                                             view.ok() ? "checksum differs from its metadata"
                                                       : std::string(view.status().message())))};
  }
  return {ReadResult::kDone, id,
          std::make_shared<const std::vector<uint8_t>>(bytes.begin(), bytes.end())};
}

bool DiskTier::Touch(const std::string& key, AccessStamp stamp) {
  MutexLock lock(&index_mu_);
  auto it = index_.find(key);
  if (it == index_.end()) return false;
  Entry& e = it->second;
  if (e.pos.tick != stamp.tick || e.pos.depth != stamp.depth) {
    const EvictionPos from = e.pos;
    e.pos.tick = stamp.tick;
    e.pos.depth = stamp.depth;
    order_.Move(from, e.pos, e.group);
  }
  return true;
}

bool DiskTier::Contains(const std::string& key) const {
  MutexLock lock(&index_mu_);
  return index_.contains(key);
}

std::optional<AccessStamp> DiskTier::Stamp(const std::string& key) const {
  MutexLock lock(&index_mu_);
  auto it = index_.find(key);
  if (it == index_.end()) return std::nullopt;
  return AccessStamp{it->second.pos.tick, it->second.pos.depth};
}

std::optional<uint64_t> DiskTier::Checksum(const std::string& key) const {
  MutexLock lock(&index_mu_);
  auto it = index_.find(key);
  if (it == index_.end()) return std::nullopt;
  return it->second.checksum;
}

absl::StatusOr<bool> DiskTier::Delete(const std::string& key) {
  MutexLock stripe(&StripeFor(key));
  {
    MutexLock lock(&index_mu_);
    auto it = index_.find(key);
    if (it == index_.end()) return false;
    RemoveLocked(it);
  }
  absl::Status st = DeleteFromDb(key, sync_writes_);
  if (!st.ok()) return st;
  AddGarbage(0);
  return true;
}

absl::Status DiskTier::Flush() {
  absl::Status st = FromRocks(db_->FlushWAL(/*sync=*/true), "flush wal");
  if (!st.ok()) return st;
  rocksdb::FlushOptions fo;
  fo.wait = true;
  return FromRocks(db_->Flush(fo, handles_), "flush");
}

}  // namespace kvtier::storage
