// The local Hugging Face cache, in the layout huggingface_hub (huggingface-cli download,
// transformers) writes, so that a model downloaded by either is found by the other:
//
//   $HF_HUB_CACHE (default $HF_HOME/hub, $HF_HOME default ~/.cache/huggingface)
//     models--ORG--NAME/
//       refs/main                 the commit a branch or tag pointed to when last downloaded
//       blobs/ETAG                each file once, named by its ETag: the sha256 of an LFS file,
//                                 the git blob sha1 of a small one
//       snapshots/COMMIT/FILE     a relative symlink to ../../blobs/ETAG
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace starling {

// A repository id `ORG/NAME` (or a bare `NAME`), checked as the Hub checks them: letters,
// digits, `-`, `_` and `.`, no `--` or `..`, at most 96 characters per part.
struct RepoId {
  std::string org;  // may be empty
  std::string name;
  std::string full() const { return org.empty() ? name : org + "/" + name; }
};

// Throws starling::Error naming what is wrong.
RepoId ParseRepoId(std::string_view text);
// True when `text` has the shape of a repository id (for telling ids from local paths).
bool LooksLikeRepoId(std::string_view text);

// The environment variable's value; empty when it is not set.
std::string HubEnv(const char* name);

// The hub cache directory from the environment: HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE, HF_HOME/hub,
// XDG_CACHE_HOME/huggingface/hub, ~/.cache/huggingface/hub (huggingface_hub's order).
std::string HubCacheDir();
// `cache`/models--ORG--NAME
std::string RepoCacheDir(const std::string& cache, const RepoId& repo);

// What `-m` was given, made into a path that the loaders open. A path that exists is returned
// as it is. Otherwise `ORG/NAME[@REVISION][/FILE...]` is looked up in the cache: REVISION (a
// branch, tag or commit; default main) through refs/ or snapshots/, and within that snapshot
// FILE, or the snapshot directory itself, or, for a snapshot that holds GGUF files and no
// config.json, its one .gguf file. Throws starling::Error listing every place it looked and
// how to download the model when nothing is found. `cache` defaults to HubCacheDir().
std::string ResolveModelPath(const std::string& reference, const std::string& cache = "");

// A short name for a model path: NAME for a path inside a cache snapshot
// (.../models--ORG--NAME/snapshots/COMMIT[/...]), else the last path component.
std::string ModelDisplayName(const std::string& path);

}  // namespace starling
