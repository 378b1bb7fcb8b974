// Subcommand registry of the `kvtier` CLI. Each area registers its commands from its own
// source file, which tools/<area>.cmake adds to the `kvtier` executable:
//
//   static int RunCodec(int argc, char** argv);  // argv[0] == "codec"
//   KVTIER_REGISTER_COMMAND(codec, "codec", "KVarN codec: encode, decode, eval, demo", RunCodec);
//
// A command returns the process exit code: 0 success, 1 failure, 2 usage error.
// Not thread-safe: registration happens during static initialization only.
#ifndef KVTIER_TOOLS_COMMAND_H_
#define KVTIER_TOOLS_COMMAND_H_

#include <string>
#include <vector>

namespace kvtier::tools {

using CommandFn = int (*)(int argc, char** argv);

struct Command {
  std::string name;
  std::string summary;
  CommandFn run;
};

// All registered commands, sorted by name.
std::vector<Command>& Commands();

struct CommandRegistrar {
  CommandRegistrar(const char* name, const char* summary, CommandFn run);
};

}  // namespace kvtier::tools

#define KVTIER_REGISTER_COMMAND(id, name, summary, fn) \
  static ::kvtier::tools::CommandRegistrar kvtier_command_registrar_##id(name, summary, fn)

#endif  // KVTIER_TOOLS_COMMAND_H_
