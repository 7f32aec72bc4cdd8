#include "hub/hf_cache.h"

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/file.h"

namespace starling {
namespace {

namespace fs = std::filesystem;

// Empty when `part` is a valid id part, else what is wrong with it.
std::string RepoPartProblem(std::string_view part) {
  if (part.empty()) return "an empty part";
  if (part.size() > 96) return "a part longer than 96 characters";
  for (const char c : part) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '-' || c == '_' || c == '.';
    if (!ok) return Concat("the character '", PrintableForError(std::string(1, c)), "'");
  }
  if (part.find("--") != std::string_view::npos) return "'--'";
  if (part.find("..") != std::string_view::npos) return "'..'";
  if (part.front() == '-' || part.front() == '.' || part.back() == '-' || part.back() == '.') {
    return "a part that starts or ends with '-' or '.'";
  }
  return "";
}

std::string ReadRef(const std::string& path) {
  std::string text = ReadFile(path);
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' ')) {
    text.pop_back();
  }
  return text;
}

// A snapshot directory that is a model in itself (config.json), or that holds exactly one
// GGUF file (a repository of GGUF files): the path to load. Empty with `note` set otherwise.
std::string ModelInSnapshot(const std::string& snapshot, std::string* note) {
  if (FileExists(snapshot + "/config.json")) return snapshot;
  std::vector<std::string> ggufs;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(snapshot, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.size() > 5 && name.substr(name.size() - 5) == ".gguf") ggufs.push_back(name);
  }
  if (ggufs.size() == 1) return snapshot + "/" + ggufs[0];
  if (ggufs.empty()) return snapshot;  // the loader says what is missing
  std::sort(ggufs.begin(), ggufs.end());
  *note = Concat(snapshot, " holds ", ggufs.size(), " GGUF files; name one, e.g. -m ORG/NAME/",
                 ggufs[0]);
  return "";
}

}  // namespace

std::string HubEnv(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr ? std::string(value) : std::string();
}

RepoId ParseRepoId(std::string_view text) {
  RepoId id;
  const size_t slash = text.find('/');
  if (slash == std::string_view::npos) {
    id.name = std::string(text);
  } else {
    id.org = std::string(text.substr(0, slash));
    id.name = std::string(text.substr(slash + 1));
    if (id.name.find('/') != std::string::npos) {
      Fail("'", PrintableForError(text), "' is not a repository id: expected ORG/NAME");
    }
  }
  for (const std::string* part : {&id.org, &id.name}) {
    if (part == &id.org && slash == std::string_view::npos) continue;
    const std::string problem = RepoPartProblem(*part);
    if (!problem.empty()) {
      Fail("'", PrintableForError(text), "' is not a repository id (ORG/NAME: letters, digits, ",
           "'-', '_', '.'): it has ", problem);
    }
  }
  return id;
}

bool LooksLikeRepoId(std::string_view text) {
  const size_t slash = text.find('/');
  if (slash == std::string_view::npos) return false;
  const std::string_view name = text.substr(slash + 1);
  const std::string_view repo_name = name.substr(0, name.find_first_of("/@"));
  return RepoPartProblem(text.substr(0, slash)).empty() && RepoPartProblem(repo_name).empty();
}

std::string HubCacheDir() {
  for (const char* name : {"HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"}) {
    if (const std::string v = HubEnv(name); !v.empty()) return v;
  }
  if (const std::string home = HubEnv("HF_HOME"); !home.empty()) return home + "/hub";
  if (const std::string xdg = HubEnv("XDG_CACHE_HOME"); !xdg.empty()) {
    return xdg + "/huggingface/hub";
  }
  const std::string home = HubEnv("HOME");
  if (home.empty()) Fail("cannot find the Hugging Face cache: neither HF_HOME nor HOME is set");
  return home + "/.cache/huggingface/hub";
}

std::string RepoCacheDir(const std::string& cache, const RepoId& repo) {
  return cache + "/models--" + (repo.org.empty() ? "" : repo.org + "--") + repo.name;
}

std::string ResolveModelPath(const std::string& reference, const std::string& cache_dir) {
  if (FileExists(reference) || IsDirectory(reference)) return reference;
  if (!LooksLikeRepoId(reference)) return reference;  // the loader says it cannot open it
  // ORG/NAME[@REVISION][/FILE...]
  const size_t slash = reference.find('/');
  const size_t end = reference.find_first_of("/@", slash + 1);
  const RepoId repo = ParseRepoId(reference.substr(0, end));
  std::string revision = "main";
  std::string file;
  if (end != std::string::npos) {
    std::string rest = reference.substr(end);
    if (rest[0] == '@') {
      const size_t file_slash = rest.find('/');
      revision =
          rest.substr(1, file_slash == std::string::npos ? std::string::npos : file_slash - 1);
      rest = file_slash == std::string::npos ? "" : rest.substr(file_slash);
      if (revision.empty() || revision.find("..") != std::string::npos) {
        Fail("'", PrintableForError(reference), "': bad revision after '@'");
      }
    }
    if (!rest.empty()) file = rest.substr(1);
    if (file.find("..") != std::string::npos) {
      Fail("'", PrintableForError(reference), "': a file name in a repository has no '..'");
    }
  }
  const std::string cache = cache_dir.empty() ? HubCacheDir() : cache_dir;
  const std::string repo_dir = RepoCacheDir(cache, repo);
  std::vector<std::string> looked;
  looked.push_back(reference + " (no such file or directory)");
  std::string commit;
  const std::string ref = repo_dir + "/refs/" + revision;
  if (FileExists(ref) && !IsDirectory(ref)) {
    commit = ReadRef(ref);
  } else {
    looked.push_back(ref + " (no such file)");
    if (IsDirectory(repo_dir + "/snapshots/" + revision)) commit = revision;  // a commit hash
  }
  std::string note;
  if (!commit.empty()) {
    const std::string snapshot = repo_dir + "/snapshots/" + commit;
    if (!IsDirectory(snapshot)) {
      looked.push_back(snapshot + " (no such directory)");
    } else if (!file.empty()) {
      const std::string path = snapshot + "/" + file;
      if (FileExists(path) || IsDirectory(path)) return path;
      looked.push_back(path + " (no such file)");
    } else if (std::string path = ModelInSnapshot(snapshot, &note); !path.empty()) {
      return path;
    }
  } else {
    looked.push_back(repo_dir + "/snapshots/" + revision + " (no such directory)");
  }
  std::string message = Concat("cannot find the model '", PrintableForError(reference), "'");
  if (!note.empty()) {
    message += ": " + note;
  } else {
    message += "; looked at:";
    for (const std::string& place : looked) message += "\n  " + place;
    message += Concat("\nto download it into the Hugging Face cache: starling pull ", repo.full(),
                      revision == "main" ? "" : " --revision " + revision,
                      " (the cache is HF_HUB_CACHE, else HF_HOME/hub, else "
                      "~/.cache/huggingface/hub)");
  }
  Fail(message);
}

std::string ModelDisplayName(const std::string& path) {
  std::string p = path;
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  const size_t slash = p.rfind('/');
  const std::string base = slash == std::string::npos ? p : p.substr(slash + 1);
  // .../models--ORG--NAME/snapshots/COMMIT
  const size_t snapshots = p.rfind("/snapshots/");
  if (snapshots != std::string::npos && p.find('/', snapshots + 11) == std::string::npos) {
    const size_t repo_start = p.rfind('/', snapshots - 1);
    const std::string repo_dir =
        p.substr(repo_start == std::string::npos ? 0 : repo_start + 1,
                 snapshots - (repo_start == std::string::npos ? 0 : repo_start + 1));
    const size_t sep = repo_dir.rfind("--");
    if (repo_dir.rfind("models--", 0) == 0 && sep != std::string::npos &&
        sep + 2 < repo_dir.size()) {
      return repo_dir.substr(sep + 2);
    }
  }
  return base;
}

}  // namespace starling
