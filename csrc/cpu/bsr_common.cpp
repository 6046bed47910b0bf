#include "bsr_common.h"

#include <ATen/Parallel.h>
#include <omp.h>

#include <mutex>
#include <unordered_map>

namespace sparsebert {
namespace {

// Index patterns already validated, so that a layer called again with the same crow/col tensors
// is not walked again on every forward (a fine-grained pattern holds one index per 4 weights:
// walking them cost as much as the product at small batches). An entry holds weak references to
// both tensors (no other tensor can take their address while it exists), their version counters
// (an in-place change through any view bumps them) and the shape they were checked against.
// Inference tensors have no version counter and are checked on every call.
struct Validated {
  c10::weak_intrusive_ptr<c10::TensorImpl> crow, col;
  int64_t crow_version, col_version;
  int64_t nb, ncb, nnzb;
};

struct PairHash {
  size_t operator()(const std::pair<const void*, const void*>& p) const {
    return std::hash<const void*>()(p.first) * 31 + std::hash<const void*>()(p.second);
  }
};

std::mutex validated_mutex;
std::unordered_map<std::pair<const void*, const void*>, Validated, PairHash> validated;
constexpr size_t kMaxValidated = 4096;

bool trackable(const at::Tensor& t) { return !t.is_inference(); }

bool was_validated(const at::Tensor& crow, const at::Tensor& col, int64_t nb, int64_t ncb, int64_t nnzb) {
  if (!trackable(crow) || !trackable(col)) return false;
  std::lock_guard<std::mutex> lock(validated_mutex);
  const auto it = validated.find({crow.unsafeGetTensorImpl(), col.unsafeGetTensorImpl()});
  if (it == validated.end()) return false;
  const Validated& v = it->second;
  return !v.crow.expired() && !v.col.expired() && v.crow_version == crow._version() &&
         v.col_version == col._version() && v.nb == nb && v.ncb == ncb && v.nnzb == nnzb;
}

void remember_validated(const at::Tensor& crow, const at::Tensor& col, int64_t nb, int64_t ncb, int64_t nnzb) {
  if (!trackable(crow) || !trackable(col)) return;
  std::lock_guard<std::mutex> lock(validated_mutex);
  if (validated.size() >= kMaxValidated) {
    for (auto it = validated.begin(); it != validated.end();)
      it = it->second.crow.expired() || it->second.col.expired() ? validated.erase(it) : std::next(it);
    if (validated.size() >= kMaxValidated) validated.clear();
  }
  validated.insert_or_assign(
      std::make_pair<const void*, const void*>(crow.unsafeGetTensorImpl(), col.unsafeGetTensorImpl()),
      Validated{c10::weak_intrusive_ptr<c10::TensorImpl>(crow.getIntrusivePtr()),
                c10::weak_intrusive_ptr<c10::TensorImpl>(col.getIntrusivePtr()),
                crow._version(), col._version(), nb, ncb, nnzb});
}

void check_pattern(const at::Tensor& crow, const at::Tensor& col, int64_t nb, int64_t ncb, int64_t nnzb);

}  // namespace

void check_indices(const at::Tensor& crow, const at::Tensor& col, int64_t nb, int64_t ncb,
                   int64_t nnzb) {
  TORCH_CHECK_VALUE(crow.scalar_type() == at::kInt && col.scalar_type() == at::kInt,
                    "crow_indices and col_indices must be int32, got ", crow.scalar_type(),
                    " and ", col.scalar_type());
  TORCH_CHECK_VALUE(crow.dim() == 1 && crow.size(0) == nb + 1, "crow_indices must have shape [",
                    nb + 1, "] (block rows + 1), got ", crow.sizes());
  TORCH_CHECK_VALUE(col.dim() == 1 && col.size(0) == nnzb, "values holds ", nnzb,
                    " blocks, so col_indices must have shape [", nnzb, "] (one per stored block), got ",
                    col.sizes());
  if (was_validated(crow, col, nb, ncb, nnzb)) return;
  check_pattern(crow, col, nb, ncb, nnzb);
  remember_validated(crow, col, nb, ncb, nnzb);
}

namespace {

void check_pattern(const at::Tensor& crow, const at::Tensor& col, int64_t nb, int64_t ncb, int64_t nnzb) {
  const int32_t* cr = crow.data_ptr<int32_t>();
  const int32_t* cl = col.data_ptr<int32_t>();
  TORCH_CHECK_VALUE(cr[0] == 0, "crow_indices[0] must be 0, got ", cr[0]);
  TORCH_CHECK_VALUE(cr[nb] == nnzb, "crow_indices[-1] must equal the number of stored blocks ",
                    nnzb, ", got ", cr[nb]);
  // Every call checks every index, so the common case (all valid) is one branch-free pass the
  // compiler vectorizes; only a pattern it rejects is walked again, check by check, for the
  // message that names the first bad value. (Fine-grained patterns hold one index per 4 weights:
  // checking them one branch at a time cost a third of a 1x4-block call.)
  bool ok = true;
  {
    int32_t bad = 0;
    for (int64_t i = 0; i < nb; ++i) bad |= cr[i] > cr[i + 1];
    ok = bad == 0;
  }
  if (ok) {
    const uint32_t ncols = static_cast<uint32_t>(ncb);
    int32_t bad = 0;
    for (int64_t j = 0; j < nnzb; ++j) bad |= static_cast<uint32_t>(cl[j]) >= ncols;  // negatives too
    for (int64_t i = 0; i < nb; ++i) {
      const int64_t j1 = cr[i + 1];
      for (int64_t j = cr[i] + 1; j < j1; ++j) bad |= cl[j - 1] >= cl[j];
    }
    if (bad == 0) return;
  }
  // All of crow first: the column checks below walk the ranges it gives.
  for (int64_t i = 0; i < nb; ++i)
    TORCH_CHECK_VALUE(cr[i] <= cr[i + 1], "crow_indices must be non-decreasing, but crow_indices[",
                      i, "]=", cr[i], " > crow_indices[", i + 1, "]=", cr[i + 1]);
  for (int64_t i = 0; i < nb; ++i) {
    for (int64_t j = cr[i]; j < cr[i + 1]; ++j) {
      TORCH_CHECK_VALUE(cl[j] >= 0 && cl[j] < ncb, "col_indices[", j, "]=", cl[j],
                        " is out of range for ", ncb, " block columns");
      TORCH_CHECK_VALUE(j == cr[i] || cl[j - 1] < cl[j], "col_indices must be strictly increasing "
                        "within a block row, but block row ", i, " has ", cl[j - 1], " then ", cl[j]);
    }
  }
  TORCH_CHECK(false, "check_indices: the fast pass rejected a pattern the detailed pass accepts");
}

}  // namespace

// Splits block rows [0, nb) into `groups` contiguous ranges of about equal work. Work of a block
// row = its stored blocks * bc (multiply-add steps per row of x) + a fixed 8 for its output
// stores, so a run of empty block rows is not free, and a dense row is not split evenly by count.
static std::vector<int64_t> balance_block_rows(const int32_t* crow, int64_t nb, int64_t bc, int64_t groups) {
  auto cost = [&](int64_t rb) { return int64_t(crow[rb]) * bc + 8 * rb; };
  const int64_t total = cost(nb);
  std::vector<int64_t> bounds(groups + 1, nb);
  bounds[0] = 0;
  int64_t rb = 0;
  for (int64_t g = 1; g < groups; ++g) {
    const int64_t target = total * g / groups;
    while (rb < nb && cost(rb) < target) ++rb;
    bounds[g] = rb;
  }
  return bounds;
}

namespace {

// The work of one linear call: groups of block rows of equal work times groups of rows of x.
struct TaskPlan {
  int64_t m_groups;
  std::vector<int64_t> bounds;
  int64_t tasks() const { return (static_cast<int64_t>(bounds.size()) - 1) * m_groups; }
  void run(const cpu::BsrLinearArgs& args, cpu::BsrLinearFn fn, int64_t task) const {
    const int64_t g = task / m_groups, mg = task % m_groups, M = args.M;
    fn(args, bounds[g], bounds[g + 1], M * mg / m_groups, M * (mg + 1) / m_groups);
  }
};

TaskPlan plan_tasks(const cpu::BsrLinearArgs& args, int64_t nb, int64_t threads) {
  const int64_t row_groups = std::min(nb, threads);
  // Split rows of x too when block rows are fewer than threads (at least 16 rows a task).
  const int64_t m_groups = std::max<int64_t>(1, std::min(threads / row_groups, ceil_div(args.M, 16)));
  return {m_groups, balance_block_rows(args.crow, nb, args.bc, row_groups)};
}

// [begin, end) of `n` items for thread t of `threads`, in chunks of at least `grain`: the split
// at::parallel_for makes.
std::pair<int64_t, int64_t> thread_share(int64_t n, int64_t grain, int64_t t, int64_t threads) {
  const int64_t chunk = std::max(grain, ceil_div(n, threads));
  const int64_t begin = std::min(n, t * chunk);
  return {begin, std::min(n, begin + chunk)};
}

}  // namespace

void run_bsr_tasks(const cpu::BsrLinearArgs& args, int64_t nb, cpu::BsrLinearFn fn) {
  const TaskPlan plan = plan_tasks(args, nb, at::get_num_threads());
  at::parallel_for(0, plan.tasks(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) plan.run(args, fn, task);
  });
}

void run_bsr_tasks_after(const cpu::BsrLinearArgs& args, int64_t nb, cpu::BsrLinearFn fn,
                         const std::function<void(int64_t, int64_t)>& prologue) {
  constexpr int64_t kPrologueGrain = 16;  // rows of x: what at::parallel_for split them by
  const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  const TaskPlan plan = plan_tasks(args, nb, threads);
  const int64_t team = std::min(threads, std::max(plan.tasks(), ceil_div(args.M, kPrologueGrain)));
  if (team <= 1) {
    prologue(0, args.M);
    for (int64_t task = 0; task < plan.tasks(); ++task) plan.run(args, fn, task);
    return;
  }
#pragma omp parallel num_threads(team)
  {
    const int64_t t = omp_get_thread_num(), n = omp_get_num_threads();
    const auto rows = thread_share(args.M, kPrologueGrain, t, n);
    if (rows.first < rows.second) prologue(rows.first, rows.second);
#pragma omp barrier
    const auto tasks = thread_share(plan.tasks(), 1, t, n);
    for (int64_t task = tasks.first; task < tasks.second; ++task) plan.run(args, fn, task);
  }
}

// Outputs from this size on are written with non-temporal stores (BsrLinearArgs::stream_y). Below
// it y stays in the caches for the op that reads it next; above, its lines would be read for
// ownership from DRAM and evict x and the weights. 8 MiB measured on AMD Zen 4 (1 MiB L2 per
// core, 32 MiB L3), 90% 32x32 INT8, 1 thread: at M=1024 x 3072 outputs (12 MiB) plain stores
// ran at 154-253 GOP/s effective and streaming ones at 310-313 (M=128: 314-317); from 4 to
// 8 MiB the gain was within 10%, and whole BERT-base forwards did not change measurably.
constexpr int64_t kStreamYBytes = int64_t(8) << 20;

LinearCall prepare_linear(const char* op, const at::Tensor& x, const at::Tensor& values, const at::Tensor& crow,
                          const at::Tensor& col, const std::optional<at::Tensor>& bias, int64_t N, int64_t K,
                          int64_t br, int64_t bc) {
  for (const at::Tensor* t : {&x, &values, &crow, &col})
    TORCH_CHECK_VALUE(t->device().is_cpu(), op, " CPU kernel got a tensor on ", t->device());
  TORCH_CHECK_VALUE(x.dim() >= 1 && x.size(-1) == K, "x must have in_features=", K,
                    " in its last dimension, got shape ", x.sizes());
  LinearCall c;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == N, "bias must have shape [", N, "], got ",
                      bias->sizes());
    TORCH_CHECK_VALUE(bias->scalar_type() == x.scalar_type(), "dtype mismatch: x is ", x.scalar_type(),
                      " but bias is ", bias->scalar_type());
    TORCH_CHECK_VALUE(bias->device().is_cpu(), op, " CPU kernel got bias on ", bias->device());
    c.bias_f32 = bias->to(at::kFloat).contiguous();
  }
  c.out_sizes.assign(x.sizes().begin(), x.sizes().end());
  c.out_sizes.back() = N;
  // M from the leading dimensions: reshape({-1, 0}) is ambiguous when K is 0.
  int64_t rows = 1;
  for (int64_t d = 0; d + 1 < x.dim(); ++d) rows *= x.size(d);
  c.x2 = x.reshape({rows, K});
  if (K > 1 && c.x2.stride(1) != 1) c.x2 = c.x2.contiguous();
  const int64_t M = c.x2.size(0);
  c.y = at::empty({M, N}, x.options());
  c.values = values.contiguous();
  c.crow = crow.contiguous();
  c.col = col.contiguous();

  cpu::BsrLinearArgs& a = c.args;
  a.x = c.x2.data_ptr();
  a.lda = c.x2.stride(0);
  a.M = M;
  a.N = N;
  a.K = K;
  a.values = c.values.data_ptr();
  // Untyped: the index dtypes are validated by check_indices before any kernel runs.
  a.crow = static_cast<const int32_t*>(c.crow.data_ptr());
  a.col = static_cast<const int32_t*>(c.col.data_ptr());
  a.br = static_cast<int>(br);
  a.bc = static_cast<int>(bc);
  a.bias = c.bias_f32.defined() ? c.bias_f32.data_ptr<float>() : nullptr;
  a.y = c.y.data_ptr();
  a.ldy = N;
  a.stream_y = M * N * int64_t(c.y.element_size()) >= kStreamYBytes;
  return c;
}

}  // namespace sparsebert
