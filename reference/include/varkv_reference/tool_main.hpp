#pragma once
//! \file
//! The error contract shared by the reference tools (varkv-generate, varkv-calibrate, ...): any bad
//! argument or file ends in exactly one line "<tool>: error: <message>" on stderr and a non-zero exit
//! (2: the command line does not parse; 1: the run failed).
//!
//! \par Snippet
//! \code
//! int main(int argc, char** argv) {
//!   CLI::App app{"..."};
//!   Options o;  // app.add_option(...)
//!   return varkv::ref::tool_main("varkv-calibrate", app, argc, argv, [&] { return run(o); });
//! }
//! \endcode
#include <exception>
#include <string>
#include <string_view>

#include <CLI/CLI.hpp>
#include <fmt/core.h>

namespace varkv::ref {

//! One line: newlines inside the message become spaces.
inline void print_tool_error(std::string_view tool, std::string message) {
  for (auto& c : message)
    if (c == '\n') c = ' ';
  fmt::print(stderr, "{}: error: {}\n", tool, message);
}

//! Parses the command line, then runs `body` (after `after_parse(app)`, when given).
template <class Body, class AfterParse = void (*)(const CLI::App&)>
int tool_main(std::string_view tool, CLI::App& app, int argc, char** argv, Body&& body,
              AfterParse&& after_parse = [](const CLI::App&) {}) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);
    print_tool_error(tool, e.what());
    return 2;
  }
  after_parse(app);
  try {
    return body();
  } catch (const std::exception& e) {
    print_tool_error(tool, e.what());
    return 1;
  }
}

}  // namespace varkv::ref
