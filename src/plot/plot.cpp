#include "plot/plot.h"

#include <cairo-svg.h>
#include <cairo.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace starling {
namespace {

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Tick positions: about `count` round numbers (1, 2 or 5 times a power of ten) over [lo, hi].
std::vector<double> Ticks(double lo, double hi, int count) {
  const double raw = (hi - lo) / count;
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  double step = magnitude;
  for (const double m : {1.0, 2.0, 5.0, 10.0}) {
    if (m * magnitude >= raw) {
      step = m * magnitude;
      break;
    }
  }
  std::vector<double> out;
  for (double t = std::ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push_back(t);
  return out;
}

std::string Label(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4g", std::abs(v) < 1e-12 ? 0.0 : v);
  return buf;
}

}  // namespace

std::vector<Series> ReadLogSeries(const std::string& path, const std::string& x_key,
                                  const std::vector<std::string>& names) {
  std::ifstream in(path);
  if (!in) Fail(path, ": cannot open");
  std::vector<Series> out;
  for (const std::string& n : names) out.push_back({n, {}, {}});
  std::string line;
  for (int64_t number = 1; std::getline(in, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      Fail(path, ":", number, ": not JSON: ", e.what());
    }
    if (!j.is_object()) Fail(path, ":", number, ": not a JSON object");
    if (!j.contains(x_key) || !j[x_key].is_number()) continue;
    const double x = j[x_key].get<double>();
    for (Series& s : out) {
      if (j.contains(s.name) && j[s.name].is_number()) {
        const double y = j[s.name].get<double>();
        if (!std::isfinite(y)) continue;
        s.x.push_back(x);
        s.y.push_back(y);
      }
    }
  }
  for (const Series& s : out) {
    if (s.x.empty()) Fail(path, ": no numeric '", s.name, "' against '", x_key, "' in the log");
  }
  return out;
}

void PlotSeries(const std::vector<Series>& series, const PlotOptions& o, const std::string& path) {
  const bool svg = EndsWith(path, ".svg");
  if (!svg && !EndsWith(path, ".png")) Fail(path, ": the output must end in .svg or .png");
  if (series.empty()) Fail("nothing to plot");
  double x_lo = std::numeric_limits<double>::infinity(), x_hi = -x_lo, y_lo = x_lo, y_hi = -x_lo;
  for (const Series& s : series) {
    for (size_t i = 0; i < s.x.size(); ++i) {
      if (o.log_y && !(s.y[i] > 0)) Fail("a logarithmic axis needs values > 0 ('", s.name, "')");
      const double y = o.log_y ? std::log10(s.y[i]) : s.y[i];
      x_lo = std::min(x_lo, s.x[i]), x_hi = std::max(x_hi, s.x[i]);
      y_lo = std::min(y_lo, y), y_hi = std::max(y_hi, y);
    }
  }
  if (x_hi == x_lo) x_lo -= 1, x_hi += 1;
  if (y_hi == y_lo) y_lo -= 1, y_hi += 1;
  const double pad = (y_hi - y_lo) * 0.05;
  y_lo -= pad, y_hi += pad;

  std::unique_ptr<cairo_surface_t, decltype(&cairo_surface_destroy)> surface(
      svg ? cairo_svg_surface_create(path.c_str(), o.width, o.height)
          : cairo_image_surface_create(CAIRO_FORMAT_ARGB32, o.width, o.height),
      cairo_surface_destroy);
  if (cairo_surface_status(surface.get()) != CAIRO_STATUS_SUCCESS) {
    Fail(path, ": cannot create the picture: ",
         cairo_status_to_string(cairo_surface_status(surface.get())));
  }
  cairo_t* cr = cairo_create(surface.get());
  const double left = 80, right = 20, top = o.title.empty() ? 20 : 44, bottom = 56;
  const double pw = o.width - left - right, ph = o.height - top - bottom;
  auto px = [&](double x) { return left + (x - x_lo) / (x_hi - x_lo) * pw; };
  auto py = [&](double y) { return top + (1.0 - (y - y_lo) / (y_hi - y_lo)) * ph; };

  cairo_set_source_rgb(cr, 1, 1, 1);
  cairo_paint(cr);
  cairo_select_font_face(cr, "sans-serif", CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
  cairo_set_font_size(cr, 12);
  cairo_set_line_width(cr, 1);
  // Grid, ticks and tick labels.
  for (const double t : Ticks(x_lo, x_hi, 8)) {
    cairo_set_source_rgb(cr, 0.9, 0.9, 0.9);
    cairo_move_to(cr, px(t), top);
    cairo_line_to(cr, px(t), top + ph);
    cairo_stroke(cr);
    cairo_set_source_rgb(cr, 0.2, 0.2, 0.2);
    const std::string label = Label(t);
    cairo_text_extents_t e;
    cairo_text_extents(cr, label.c_str(), &e);
    cairo_move_to(cr, px(t) - e.width / 2, top + ph + 16);
    cairo_show_text(cr, label.c_str());
  }
  for (const double t : Ticks(y_lo, y_hi, 6)) {
    cairo_set_source_rgb(cr, 0.9, 0.9, 0.9);
    cairo_move_to(cr, left, py(t));
    cairo_line_to(cr, left + pw, py(t));
    cairo_stroke(cr);
    cairo_set_source_rgb(cr, 0.2, 0.2, 0.2);
    const std::string label = o.log_y ? Label(std::pow(10.0, t)) : Label(t);
    cairo_text_extents_t e;
    cairo_text_extents(cr, label.c_str(), &e);
    cairo_move_to(cr, left - 8 - e.width, py(t) + e.height / 2);
    cairo_show_text(cr, label.c_str());
  }
  cairo_set_source_rgb(cr, 0, 0, 0);
  cairo_rectangle(cr, left, top, pw, ph);
  cairo_stroke(cr);
  cairo_text_extents_t e;
  cairo_text_extents(cr, o.x_label.c_str(), &e);
  cairo_move_to(cr, left + pw / 2 - e.width / 2, o.height - 16);
  cairo_show_text(cr, o.x_label.c_str());
  if (!o.title.empty()) {
    cairo_set_font_size(cr, 16);
    cairo_text_extents(cr, o.title.c_str(), &e);
    cairo_move_to(cr, left + pw / 2 - e.width / 2, 28);
    cairo_show_text(cr, o.title.c_str());
    cairo_set_font_size(cr, 12);
  }
  // The series, clipped to the plot area, and the legend.
  static const double kColors[][3] = {{0.12, 0.47, 0.71}, {1.0, 0.5, 0.05},  {0.17, 0.63, 0.17},
                                      {0.84, 0.15, 0.16}, {0.58, 0.4, 0.74}, {0.55, 0.34, 0.29}};
  for (size_t k = 0; k < series.size(); ++k) {
    const Series& s = series[k];
    const double* c = kColors[k % 6];
    cairo_save(cr);
    cairo_rectangle(cr, left, top, pw, ph);
    cairo_clip(cr);
    cairo_set_source_rgb(cr, c[0], c[1], c[2]);
    cairo_set_line_width(cr, 1.75);
    for (size_t i = 0; i < s.x.size(); ++i) {
      const double y = o.log_y ? std::log10(s.y[i]) : s.y[i];
      if (i == 0) {
        cairo_move_to(cr, px(s.x[i]), py(y));
      } else {
        cairo_line_to(cr, px(s.x[i]), py(y));
      }
    }
    if (s.x.size() == 1)
      cairo_arc(cr, px(s.x[0]), py(o.log_y ? std::log10(s.y[0]) : s.y[0]), 3, 0, 7);
    cairo_stroke(cr);
    cairo_restore(cr);
    const double ly = top + 16 + 18 * static_cast<double>(k);
    cairo_set_source_rgb(cr, c[0], c[1], c[2]);
    cairo_set_line_width(cr, 3);
    cairo_move_to(cr, left + pw - 150, ly - 4);
    cairo_line_to(cr, left + pw - 126, ly - 4);
    cairo_stroke(cr);
    cairo_set_source_rgb(cr, 0.1, 0.1, 0.1);
    cairo_move_to(cr, left + pw - 120, ly);
    cairo_show_text(cr, s.name.c_str());
  }
  cairo_destroy(cr);
  if (svg) {
    cairo_surface_finish(surface.get());
  } else if (cairo_surface_write_to_png(surface.get(), path.c_str()) != CAIRO_STATUS_SUCCESS) {
    Fail(path, ": cannot write the PNG");
  }
  if (cairo_surface_status(surface.get()) != CAIRO_STATUS_SUCCESS) {
    Fail(path, ": ", cairo_status_to_string(cairo_surface_status(surface.get())));
  }
}

}  // namespace starling
