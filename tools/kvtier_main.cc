// kvtier: the command-line tool. `kvtier help` lists the subcommands.
#include <cstdio>
#include <cstring>

#include "tools/command.h"

namespace {

void PrintUsage(FILE* out) {
  std::fprintf(out, "usage: kvtier <command> [args...]\n\ncommands:\n");
  for (const auto& c : kvtier::tools::Commands()) {
    std::fprintf(out, "  %-10s %s\n", c.name.c_str(), c.summary.c_str());
  }
  std::fprintf(out, "\n`kvtier <command> --help` describes a command.\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], "help") == 0 || std::strcmp(argv[1], "--help") == 0 ||
      std::strcmp(argv[1], "-h") == 0) {
    PrintUsage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  for (const auto& c : kvtier::tools::Commands()) {
    if (c.name == argv[1]) return c.run(argc - 1, argv + 1);
  }
  std::fprintf(stderr, "kvtier: unknown command '%s'\n\n", argv[1]);
  PrintUsage(stderr);
  return 2;
}
