// policy_loop: an rnnpolicy AOTInductor package (model.aoti.pt2) in a fixed-rate control loop.
//
//   policy_loop MODEL.aoti.pt2 [--input FILE|-] [--hz HZ] [--threads N]
//
// The program carries the recurrent state itself: each step feeds the previous step's
// next_state_* back as state_*, and an episode start zeroes it inside the graph.
//
// Input (FILE, or stdin with "-" or no --input): one step per line,
//   EPISODE_START OBS_1 ... OBS_N
// whitespace-separated numbers; EPISODE_START is 1 for the first observation of an episode,
// else 0; N is the policy's obs_dim (encoded observation). Blank lines and lines starting with
// '#' are skipped.
// Output (stdout): one JSON object per step, flushed at once:
//   {"step": 0, "action": 2, "value": 0.125}
// "action" is an integer (discrete actions) or a list of numbers (continuous); "value" only for
// actor-critic policies.
// Summary (stderr): step latency percentiles (the model call with its input and output
// handling, not the reading and printing) and, with --hz, the ticks the step overran.
// --hz HZ: one step per 1/HZ seconds (0, the default: as fast as possible).
// --threads N: intra-op threads (default 1: a small recurrent net runs fastest on one).
// Exit status: 0 on success, 2 on bad arguments, input or model.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

struct Options {
  std::string model;
  std::string input = "-";
  double hz = 0.0;
  int threads = 1;
};

// The interface from the package's metadata (written by rnnpolicy export --aot).
struct Interface {
  std::vector<std::string> input_names;
  std::vector<std::string> output_names;
  int64_t obs_dim = 0;
  std::vector<std::pair<int64_t, int64_t>> state_shapes;  // (layers, hidden) per state tensor
  size_t action_index = 0;
  int value_index = -1;  // -1: no value output (Q-network)
};

// A bad argument, input line or model. Thrown, not std::exit(), so that the stack unwinds and the
// package loader's destructor removes the directory it extracted the model into.
struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

[[noreturn]] void fail(const std::string& message) { throw Failure(message); }

std::vector<std::string> split(const std::string& text, char sep) {
  std::vector<std::string> parts;
  std::stringstream stream(text);
  for (std::string part; std::getline(stream, part, sep);) parts.push_back(part);
  return parts;
}

Options parse_args(int argc, char** argv) {
  Options options;
  const std::string usage = "usage: policy_loop MODEL.aoti.pt2 [--input FILE|-] [--hz HZ] [--threads N]";
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&](const char* name) -> std::string {
      if (i + 1 >= argc) fail(std::string(name) + " needs a value; " + usage);
      return argv[++i];
    };
    try {
      if (arg == "--input") {
        options.input = value("--input");
      } else if (arg == "--hz") {
        std::string text = value("--hz");
        options.hz = std::stod(text);
        if (!(options.hz >= 0.0) || !std::isfinite(options.hz)) fail("--hz must be >= 0 (0: as fast as possible), got " + text);
      } else if (arg == "--threads") {
        std::string text = value("--threads");
        options.threads = std::stoi(text);
        if (options.threads < 1) fail("--threads must be >= 1, got " + text);
      } else if (arg == "-h" || arg == "--help") {
        std::cout << usage << std::endl;
        std::exit(0);
      } else if (!arg.empty() && arg[0] == '-') {
        fail("unknown option " + arg + "; " + usage);
      } else if (options.model.empty()) {
        options.model = arg;
      } else {
        fail("unexpected argument " + arg + "; " + usage);
      }
    } catch (const std::logic_error&) {  // std::stod / std::stoi on a non-number
      fail(arg + " needs a number, got " + argv[i]);
    }
  }
  if (options.model.empty()) fail("no model given; " + usage);
  return options;
}

Interface read_interface(const std::unordered_map<std::string, std::string>& metadata, const std::string& path) {
  auto get = [&](const std::string& key) -> const std::string& {
    auto it = metadata.find(key);
    if (it == metadata.end()) fail(path + " has no '" + key + "' metadata: not exported by `rnnpolicy export --aot`");
    return it->second;
  };
  Interface interface;
  interface.input_names = split(get("rnnpolicy.input_names"), ',');
  interface.output_names = split(get("rnnpolicy.output_names"), ',');
  interface.obs_dim = std::stoll(get("rnnpolicy.obs_dim"));
  for (const auto& shape : split(get("rnnpolicy.state_shapes"), ',')) {
    auto dims = split(shape, 'x');
    interface.state_shapes.emplace_back(std::stoll(dims.at(0)), std::stoll(dims.at(1)));
  }
  const auto& outputs = interface.output_names;
  auto action = std::find(outputs.begin(), outputs.end(), "action");
  if (action == outputs.end()) fail(path + ": no 'action' output");
  interface.action_index = action - outputs.begin();
  auto value = std::find(outputs.begin(), outputs.end(), "value");
  if (value != outputs.end()) interface.value_index = static_cast<int>(value - outputs.begin());
  return interface;
}

// One step's numbers from a line: the episode_start flag, then obs_dim observation values.
bool parse_step(const std::string& line, size_t line_number, int64_t obs_dim, float& episode_start, std::vector<float>& obs) {
  size_t first = line.find_first_not_of(" \t\r");
  if (first == std::string::npos || line[first] == '#') return false;
  std::istringstream stream(line);
  std::vector<float> values;
  std::string token;
  while (stream >> token) {
    try {
      size_t used = 0;
      values.push_back(std::stof(token, &used));
      if (used != token.size()) throw std::invalid_argument(token);
    } catch (const std::exception&) {
      fail("line " + std::to_string(line_number) + ": '" + token + "' is not a number");
    }
  }
  if (static_cast<int64_t>(values.size()) != 1 + obs_dim) {
    fail("line " + std::to_string(line_number) + ": expected 1 + " + std::to_string(obs_dim) +
         " numbers (episode_start, then the observation), got " + std::to_string(values.size()));
  }
  if (values[0] != 0.0f && values[0] != 1.0f) {
    fail("line " + std::to_string(line_number) + ": episode_start must be 0 or 1, got " + std::to_string(values[0]));
  }
  episode_start = values[0];
  obs.assign(values.begin() + 1, values.end());
  return true;
}

void print_step(size_t step, const std::vector<at::Tensor>& outputs, const Interface& interface) {
  const at::Tensor& action = outputs[interface.action_index];
  std::printf("{\"step\": %zu, \"action\": ", step);
  if (action.scalar_type() == at::kLong) {
    std::printf("%lld", static_cast<long long>(action.data_ptr<int64_t>()[0]));
  } else {
    const float* values = action.contiguous().data_ptr<float>();
    std::printf("[");
    for (int64_t i = 0; i < action.numel(); ++i) std::printf(i ? ", %.9g" : "%.9g", values[i]);
    std::printf("]");
  }
  if (interface.value_index >= 0) std::printf(", \"value\": %.9g", outputs[interface.value_index].item<float>());
  std::printf("}\n");
  std::fflush(stdout);
}

double percentile(std::vector<double> sorted, double p) {  // nearest rank
  if (sorted.empty()) return 0.0;
  size_t rank = static_cast<size_t>(std::ceil(p * sorted.size()));
  return sorted[std::max<size_t>(rank, 1) - 1];
}

int run(int argc, char** argv) {
  Options options = parse_args(argc, argv);
  at::set_num_threads(options.threads);

  std::ifstream file;
  if (options.input != "-") {
    file.open(options.input);
    if (!file) fail("cannot read input file " + options.input);
  }
  std::istream& input = options.input == "-" ? std::cin : file;

  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader;
  try {
    // run_single_threaded: this loop is the only caller, so the runner needs no locking.
    loader = std::make_unique<torch::inductor::AOTIModelPackageLoader>(options.model, "model", true);
  } catch (const std::exception& error) {
    std::string what = error.what();
    fail("cannot load AOTInductor package " + options.model + ": " + what.substr(0, what.find('\n')));  // not torch's trace
  }
  const Interface interface = read_interface(loader->get_metadata(), options.model);
  const size_t n_state = interface.state_shapes.size();

  std::vector<at::Tensor> state;  // (layers, 1, hidden) each; zeros start an episode
  for (const auto& [layers, hidden] : interface.state_shapes) state.push_back(at::zeros({layers, 1, hidden}));

  const auto period = options.hz > 0 ? std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(1.0 / options.hz))
                                     : Clock::duration::zero();
  auto next_tick = Clock::now();
  size_t overruns = 0;
  std::vector<double> latencies_us;
  std::vector<float> obs;
  float episode_start = 0.0f;
  std::string line;
  for (size_t line_number = 1; std::getline(input, line); ++line_number) {
    if (!parse_step(line, line_number, interface.obs_dim, episode_start, obs)) continue;
    if (options.hz > 0) std::this_thread::sleep_until(next_tick);

    auto start = Clock::now();
    std::vector<at::Tensor> inputs;
    inputs.reserve(2 + n_state);
    inputs.push_back(at::from_blob(obs.data(), {1, interface.obs_dim}, at::kFloat));  // (1, obs_dim)
    inputs.push_back(at::from_blob(&episode_start, {1}, at::kFloat));                 // (1,)
    inputs.insert(inputs.end(), state.begin(), state.end());                          // (layers, 1, hidden)
    std::vector<at::Tensor> outputs = loader->run(inputs);
    if (outputs.size() != interface.output_names.size()) {
      fail("the model returned " + std::to_string(outputs.size()) + " outputs, its metadata names " +
           std::to_string(interface.output_names.size()));
    }
    state.assign(outputs.end() - n_state, outputs.end());  // next_state_* -> state_*
    auto end = Clock::now();
    latencies_us.push_back(std::chrono::duration<double, std::micro>(end - start).count());

    print_step(latencies_us.size() - 1, outputs, interface);
    if (options.hz > 0) {
      next_tick += period;
      if (Clock::now() > next_tick) {  // this step (or the input) took longer than the period
        ++overruns;
        next_tick = Clock::now();
      }
    }
  }

  std::vector<double> sorted = latencies_us;
  std::sort(sorted.begin(), sorted.end());
  char rate[64] = "full speed";
  if (options.hz > 0) std::snprintf(rate, sizeof rate, "%g Hz", options.hz);
  std::fprintf(stderr,
               "policy_loop: %zu steps at %s: step latency p50 %.1f us, p99 %.1f us, max %.1f us; %zu overruns\n",
               sorted.size(), rate, percentile(sorted, 0.50), percentile(sorted, 0.99),
               sorted.empty() ? 0.0 : sorted.back(), overruns);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const Failure& failure) {
    std::cerr << "policy_loop: error: " << failure.what() << std::endl;
    return 2;
  }
}
