// `starling pull`: a model repository from the Hugging Face Hub's HTTP API into the local
// Hugging Face cache (hf_cache.h), as huggingface_hub's snapshot_download lays it out:
//   GET  {endpoint}/api/models/{repo}/revision/{revision}?blobs=true   commit + file list
//   HEAD {endpoint}/{repo}/resolve/{commit}/{file}   ETag / X-Linked-Etag (the sha256 of an
//                                                     LFS file), X-Linked-Size / Content-Length
//   GET  the same, following redirects (to a CDN: without the token), Range to resume
// Each file goes to blobs/ETAG.incomplete, is checked (size; sha256 for LFS files), renamed to
// blobs/ETAG and linked from snapshots/COMMIT/FILE; refs/REVISION is written last, so `-m`
// finds only complete snapshots. An interrupted pull resumes where it stopped.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace starling {

struct PullOptions {
  std::string repo;                  // ORG/NAME
  std::string revision = "main";     // branch, tag or commit
  std::vector<std::string> include;  // glob patterns (fnmatch, '*' crosses '/'); empty: default
  std::string endpoint;              // default: $HF_ENDPOINT, else https://huggingface.co
  std::string token;                 // default: $HF_TOKEN, else $HF_HOME/token
  std::string cache;                 // default: HubCacheDir()
  int timeout_seconds = 60;          // connect and per-read timeout
};

struct PullProgress {
  std::string file;
  int file_index = 0;  // 1-based
  int file_count = 0;
  uint64_t done = 0;   // bytes of this file on disk
  uint64_t total = 0;  // 0 when unknown
  uint64_t resumed_from = 0;
  bool finished = false;  // the file is complete (downloaded, or already present)
  bool already_present = false;
};

struct PullResult {
  std::string commit;
  std::string snapshot;  // the directory `-m ORG/NAME` resolves to
  int files = 0;
  int downloaded = 0;  // the rest were present already
  uint64_t bytes_downloaded = 0;
  std::vector<std::string> skipped;  // files the default selection left out
};

// Throws starling::Error with what went wrong (HTTP status and what it means, the file, how far
// it got); a failed file's partial download is kept for the next run unless its checksum is bad.
PullResult Pull(const PullOptions& options,
                const std::function<void(const PullProgress&)>& progress = {});

// The files of `files` that a pull takes: those matching any `include` pattern; with none,
// every file except PyTorch/TF/Flax weights when safetensors weights are present (those go to
// `skipped`). Throws when the default would take several GGUF files (a repository of
// quantizations: name one with --include).
std::vector<std::string> SelectFiles(const std::vector<std::string>& files,
                                     const std::vector<std::string>& include,
                                     std::vector<std::string>* skipped);

// Lowercase hex SHA-256 of a file's bytes.
std::string Sha256File(const std::string& path);

}  // namespace starling
