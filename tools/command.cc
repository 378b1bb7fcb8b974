#include "tools/command.h"

#include <algorithm>

namespace kvtier::tools {

std::vector<Command>& Commands() {
  static auto* commands = new std::vector<Command>();
  return *commands;
}

CommandRegistrar::CommandRegistrar(const char* name, const char* summary, CommandFn run) {
  auto& c = Commands();
  c.push_back({name, summary, run});
  std::sort(c.begin(), c.end(), [](const Command& a, const Command& b) { return a.name < b.name; });
}

}  // namespace kvtier::tools
