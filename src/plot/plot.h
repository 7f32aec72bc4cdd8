// Line charts of training logs (JSON Lines, one object per step) as SVG or PNG, drawn with
// cairo: `starling plot`.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace starling {

struct Series {
  std::string name;
  std::vector<double> x, y;  // points in log order (x ascending)
};

// The numeric series `names` of a JSON Lines log, against the numeric key `x_key`; lines
// without a series' key add no point to it. Throws naming path:line for a line that is not a
// JSON object, and when a named series has no point at all.
std::vector<Series> ReadLogSeries(const std::string& path, const std::string& x_key,
                                  const std::vector<std::string>& names);

struct PlotOptions {
  int width = 960;
  int height = 540;
  std::string title;
  std::string x_label = "step";
  bool log_y = false;  // a logarithmic y axis (all values must be > 0)
};

// Draws every series in its own colour with a legend, axes with ticks and labels, into
// `path`: SVG when it ends in .svg, PNG when it ends in .png (else an error).
void PlotSeries(const std::vector<Series>& series, const PlotOptions& options,
                const std::string& path);

}  // namespace starling
