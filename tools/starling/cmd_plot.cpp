// `starling plot`: training curves from a --log JSON Lines file, as SVG or PNG.
#include <cstdio>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "commands.h"
#include "core/error.h"
#include "plot/plot.h"

namespace starling::cli {

void RegisterPlot(CLI::App& app) {
  struct Flags {
    std::string log, out, series = "loss,eval_loss", x = "step", title;
    bool log_y = false;
    int width = 960, height = 540;
  };
  auto f = std::make_shared<Flags>();
  CLI::App* p = app.add_subcommand(
      "plot",
      "Draw numeric series of a training log (JSON Lines, e.g. train --log) as SVG or PNG.\n"
      "Example: starling plot run/log.jsonl -o curves.png --series loss,eval_loss,grad_norm");
  p->add_option("log", f->log, "the JSON Lines log")->required();
  p->add_option("-o,--out", f->out, "picture to write: .svg or .png")->required();
  p->add_option("--series", f->series,
                "comma-separated keys to draw (series absent from every line are an error)")
      ->capture_default_str();
  p->add_option("--x", f->x, "the key along the horizontal axis")->capture_default_str();
  p->add_option("--title", f->title, "a title above the chart");
  p->add_flag("--log-y", f->log_y, "logarithmic vertical axis");
  p->add_option("--width", f->width, "pixels")
      ->check(CLI::Range(200, 10000))
      ->capture_default_str();
  p->add_option("--height", f->height, "pixels")
      ->check(CLI::Range(150, 10000))
      ->capture_default_str();
  p->callback([f] {
    std::vector<std::string> names;
    std::istringstream in(f->series);
    for (std::string name; std::getline(in, name, ',');) {
      if (!name.empty()) names.push_back(name);
    }
    // eval_loss is drawn when the log has it; other missing series are errors.
    std::vector<Series> series;
    for (const std::string& name : names) {
      try {
        series.push_back(ReadLogSeries(f->log, f->x, {name})[0]);
      } catch (const Error&) {
        if (name != "eval_loss" || names.size() == 1) throw;
      }
    }
    PlotOptions o;
    o.width = f->width, o.height = f->height, o.title = f->title, o.x_label = f->x;
    o.log_y = f->log_y;
    PlotSeries(series, o, f->out);
    std::fprintf(stderr, "wrote %s (%zu series)\n", f->out.c_str(), series.size());
  });
}

}  // namespace starling::cli
