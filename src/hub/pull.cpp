#include "hub/pull.h"

#include <fnmatch.h>
#include <httplib.h>
#include <openssl/evp.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/file.h"
#include "hub/hf_cache.h"

namespace starling {
namespace {

namespace fs = std::filesystem;

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// Percent-encodes all but unreserved characters (and '/' when `keep_slash`).
std::string UrlEncode(std::string_view s, bool keep_slash) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~' ||
        (keep_slash && c == '/')) {
      out += ch;
    } else {
      out += {'%', kHex[c >> 4], kHex[c & 15]};
    }
  }
  return out;
}

struct Url {
  std::string origin;  // scheme://host[:port]
  std::string path;    // from the first '/', with the query
};

Url ParseUrl(const std::string& url) {
  const size_t scheme_end = url.find("://");
  if (scheme_end == std::string::npos ||
      (url.compare(0, scheme_end, "http") != 0 && url.compare(0, scheme_end, "https") != 0)) {
    Fail("'", PrintableForError(url), "' is not an http:// or https:// URL");
  }
  const size_t path_start = url.find('/', scheme_end + 3);
  if (path_start == scheme_end + 3) Fail("'", PrintableForError(url), "' has no host");
  if (path_start == std::string::npos) return {url, "/"};
  return {url.substr(0, path_start), url.substr(path_start)};
}

// The ETag header's value without W/ and quotes.
std::string CleanEtag(std::string etag) {
  if (etag.rfind("W/", 0) == 0) etag = etag.substr(2);
  if (etag.size() >= 2 && etag.front() == '"' && etag.back() == '"') {
    etag = etag.substr(1, etag.size() - 2);
  }
  return etag;
}

bool IsSha256(std::string_view s) {
  return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

// A blob name: nothing that could leave the blobs directory.
bool SafeEtag(std::string_view s) {
  return !s.empty() && s.size() <= 128 && std::all_of(s.begin(), s.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_';
  });
}

// A file name from the server, checked before it becomes a path under the snapshot.
void CheckRepoFileName(const std::string& name) {
  bool ok = !name.empty() && name.size() <= 1024 && name.front() != '/' && name.back() != '/' &&
            name.find('\\') == std::string::npos && name.find('\0') == std::string::npos;
  if (ok) {
    size_t start = 0;
    while (start <= name.size()) {
      const size_t end = std::min(name.find('/', start), name.size());
      const std::string_view part = std::string_view(name).substr(start, end - start);
      if (part.empty() || part == "." || part == "..") ok = false;
      start = end + 1;
    }
  }
  for (const char c : name) ok = ok && static_cast<unsigned char>(c) >= 0x20;
  if (!ok) Fail("the hub listed a file with an unsafe name: '", PrintableForError(name), "'");
}

std::string StatusMeaning(int status, const std::string& repo, const std::string& revision,
                          bool has_token) {
  switch (status) {
    case 401:
    case 403:
      return has_token ? Concat("access denied: the token (HF_TOKEN) has no access to ", repo,
                                "; a gated model needs its license accepted on its page first")
                       : Concat(repo,
                                " is private or gated, or does not exist: set HF_TOKEN to a token "
                                "with access (a gated model needs its license accepted first)");
    case 404: return Concat("not found: no repository ", repo, " or no revision '", revision, "'");
    case 429: return "rate limited by the hub; try again later";
    default: return status >= 500 ? "a server error; try again later" : "unexpected status";
  }
}

class HubClient {
 public:
  HubClient(const PullOptions& o, std::string endpoint, std::string token)
      : options_(o), endpoint_(std::move(endpoint)), token_(std::move(token)) {
    while (!endpoint_.empty() && endpoint_.back() == '/') endpoint_.pop_back();
    endpoint_origin_ = ParseUrl(endpoint_).origin;
  }

  const std::string& endpoint() const { return endpoint_; }
  bool has_token() const { return !token_.empty(); }

  // One request to `url`; redirects are followed (`follow_absolute`: also to other hosts, the
  // token sent only to the endpoint's own host). Returns the last response's headers and status.
  httplib::Response Request(const std::string& method, std::string url, httplib::Headers extra,
                            bool follow_absolute,
                            const std::function<bool(const httplib::Response&)>& on_response = {},
                            const std::function<bool(const char*, size_t)>& on_data = {}) {
    for (int redirects = 0;; ++redirects) {
      if (redirects > 10) Fail("too many redirects for ", url);
      const Url u = ParseUrl(url);
      httplib::Client client(u.origin);
      client.set_connection_timeout(options_.timeout_seconds);
      client.set_read_timeout(options_.timeout_seconds);
      client.set_follow_location(false);
      client.set_decompress(false);
      httplib::Headers headers = extra;
      headers.emplace("Accept-Encoding", "identity");
      headers.emplace("User-Agent", "starling/0.1.0");
      if (!token_.empty() && u.origin == endpoint_origin_) {
        headers.emplace("Authorization", "Bearer " + token_);
      }
      httplib::Response last;
      bool redirect = false;
      httplib::Result result =
          method == "HEAD"
              ? client.Head(u.path, headers)
              : client.Get(
                    u.path, headers,
                    [&](const httplib::Response& r) {
                      last = r;
                      redirect = r.status >= 300 && r.status < 400 && r.has_header("Location");
                      if (redirect) return true;  // the body of a redirect is dropped
                      return on_response ? on_response(r) : true;
                    },
                    [&](const char* data, size_t n) {
                      return redirect || !on_data || on_data(data, n);
                    });
      if (!result) {
        if (result.error() == httplib::Error::Canceled) {
          last.status = last.status == -1 ? 0 : last.status;
          return last;  // on_response or on_data said stop
        }
        Fail(method, " ", url, ": ",
             result.error() == httplib::Error::Connection
                 ? Concat("cannot connect (is ", endpoint_,
                          " reachable? HF_ENDPOINT sets another hub)")
                 : httplib::to_string(result.error()));
      }
      const httplib::Response& r = *result;
      if (r.status >= 300 && r.status < 400 && r.has_header("Location")) {
        const std::string location = r.get_header_value("Location");
        const bool absolute = location.find("://") != std::string::npos;
        if (absolute && !follow_absolute) return r;
        url = absolute ? location : u.origin + (location[0] == '/' ? "" : "/") + location;
        continue;
      }
      return r;
    }
  }

 private:
  const PullOptions& options_;
  std::string endpoint_;
  std::string endpoint_origin_;
  std::string token_;
};

std::string DefaultToken() {
  for (const char* name : {"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"}) {
    if (std::string v = HubEnv(name); !v.empty()) return v;
  }
  std::string path = HubEnv("HF_TOKEN_PATH");
  if (path.empty()) {
    const std::string home = HubEnv("HF_HOME");
    path = !home.empty()             ? home + "/token"
           : !HubEnv("HOME").empty() ? HubEnv("HOME") + "/.cache/huggingface/token"
                                     : std::string();
  }
  if (path.empty() || !FileExists(path)) return "";
  std::string token = ReadFile(path);
  while (!token.empty() && std::isspace(static_cast<unsigned char>(token.back()))) token.pop_back();
  return token;
}

struct RemoteFile {
  std::string name;
  uint64_t size = 0;  // 0: unknown
  std::string lfs_sha256;
};

struct FileMetadata {
  std::string etag;
  uint64_t size = 0;
};

uint64_t HeaderNumber(const httplib::Response& r, const char* name) {
  if (!r.has_header(name)) return 0;
  return std::strtoull(r.get_header_value(name).c_str(), nullptr, 10);
}

void Relink(const std::string& link, const std::string& target) {
  fs::create_directories(fs::path(link).parent_path());
  std::error_code ec;
  fs::remove(link, ec);
  fs::create_symlink(target, link, ec);
  if (ec) Fail("cannot create the link ", link, " -> ", target, ": ", ec.message());
}

}  // namespace

std::string Sha256File(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) Fail("cannot open ", path);
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr);
  std::vector<char> buffer(1 << 20);
  size_t n = 0;
  while ((n = std::fread(buffer.data(), 1, buffer.size(), f)) > 0) {
    EVP_DigestUpdate(ctx.get(), buffer.data(), n);
  }
  const bool failed = std::ferror(f) != 0;
  std::fclose(f);
  if (failed) Fail("cannot read ", path);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_DigestFinal_ex(ctx.get(), digest, &length);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  for (unsigned int i = 0; i < length; ++i) hex += {kHex[digest[i] >> 4], kHex[digest[i] & 15]};
  return hex;
}

std::vector<std::string> SelectFiles(const std::vector<std::string>& files,
                                     const std::vector<std::string>& include,
                                     std::vector<std::string>* skipped) {
  std::vector<std::string> selected;
  if (!include.empty()) {
    for (const std::string& f : files) {
      for (const std::string& pattern : include) {
        if (::fnmatch(pattern.c_str(), f.c_str(), 0) == 0) {
          selected.push_back(f);
          break;
        }
      }
    }
    return selected;
  }
  const bool has_safetensors = std::any_of(
      files.begin(), files.end(), [](const std::string& f) { return EndsWith(f, ".safetensors"); });
  std::vector<std::string> ggufs;
  for (const std::string& f : files) {
    if (EndsWith(f, ".gguf")) ggufs.push_back(f);
    const bool other_weights = EndsWith(f, ".bin") || EndsWith(f, ".pt") || EndsWith(f, ".pth") ||
                               EndsWith(f, ".h5") || EndsWith(f, ".msgpack") ||
                               EndsWith(f, ".ckpt") || EndsWith(f, ".onnx") || EndsWith(f, ".ot");
    if (has_safetensors && other_weights) {
      if (skipped != nullptr) skipped->push_back(f);
    } else {
      selected.push_back(f);
    }
  }
  if (ggufs.size() > 1) {
    std::string list;
    for (const std::string& g : ggufs) list += "\n  " + g;
    Fail("the repository holds ", ggufs.size(), " GGUF files; choose with --include, e.g. ",
         "--include '*Q4_K_M.gguf':", list);
  }
  return selected;
}

PullResult Pull(const PullOptions& o, const std::function<void(const PullProgress&)>& progress) {
  const RepoId repo = ParseRepoId(o.repo);
  if (o.revision.empty() || o.revision.find("..") != std::string::npos ||
      o.revision.front() == '/' || o.revision.back() == '/') {
    Fail("bad revision '", PrintableForError(o.revision), "'");
  }
  std::string endpoint = o.endpoint.empty() ? HubEnv("HF_ENDPOINT") : o.endpoint;
  if (endpoint.empty()) endpoint = "https://huggingface.co";
  HubClient hub(o, endpoint, o.token.empty() ? DefaultToken() : o.token);
  const std::string cache = o.cache.empty() ? HubCacheDir() : o.cache;
  const std::string repo_dir = RepoCacheDir(cache, repo);

  // 1. The commit and the file list.
  const std::string api_url = Concat(hub.endpoint(), "/api/models/", repo.full(), "/revision/",
                                     UrlEncode(o.revision, false), "?blobs=true");
  std::string body;
  const httplib::Response info =
      hub.Request("GET", api_url, {}, true, {}, [&](const char* data, size_t n) {
        if (body.size() + n > (64u << 20)) return false;
        body.append(data, n);
        return true;
      });
  if (info.status != 200) {
    Fail("cannot get ", repo.full(), " at '", o.revision, "' from ", hub.endpoint(), ": HTTP ",
         info.status, ": ", StatusMeaning(info.status, repo.full(), o.revision, hub.has_token()));
  }
  PullResult result;
  std::vector<RemoteFile> remote;
  try {
    const nlohmann::json j = nlohmann::json::parse(body);
    result.commit = j.at("sha").get<std::string>();
    for (const nlohmann::json& s : j.at("siblings")) {
      RemoteFile f;
      f.name = s.at("rfilename").get<std::string>();
      if (s.contains("size") && s["size"].is_number_unsigned()) f.size = s["size"].get<uint64_t>();
      if (s.contains("lfs") && s["lfs"].is_object()) {
        const nlohmann::json& lfs = s["lfs"];
        if (lfs.contains("sha256")) f.lfs_sha256 = lfs["sha256"].get<std::string>();
        if (lfs.contains("size") && lfs["size"].is_number_unsigned()) {
          f.size = lfs["size"].get<uint64_t>();
        }
      }
      remote.push_back(std::move(f));
    }
  } catch (const nlohmann::json::exception& e) {
    Fail(api_url, ": not the hub's model info (", e.what(), ")");
  }
  if (!SafeEtag(result.commit)) {
    Fail(api_url, ": bad commit id '", PrintableForError(result.commit), "'");
  }
  std::vector<std::string> names;
  for (const RemoteFile& f : remote) {
    CheckRepoFileName(f.name);
    names.push_back(f.name);
  }
  const std::vector<std::string> selected = SelectFiles(names, o.include, &result.skipped);
  if (selected.empty()) {
    Fail(repo.full(), " at ", result.commit, ": no file matches --include (", names.size(),
         " files in the repository)");
  }
  result.snapshot = repo_dir + "/snapshots/" + result.commit;
  fs::create_directories(repo_dir + "/blobs");
  fs::create_directories(result.snapshot);

  // 2. Each file.
  for (size_t index = 0; index < selected.size(); ++index) {
    const std::string& name = selected[index];
    const RemoteFile& rf = *std::find_if(remote.begin(), remote.end(),
                                         [&](const RemoteFile& f) { return f.name == name; });
    PullProgress p;
    p.file = name;
    p.file_index = static_cast<int>(index) + 1;
    p.file_count = static_cast<int>(selected.size());
    const std::string url = Concat(hub.endpoint(), "/", repo.full(), "/resolve/", result.commit,
                                   "/", UrlEncode(name, true));
    // The metadata: from the resolve URL itself, as huggingface_hub reads it (a redirect to
    // another host carries X-Linked-Etag and X-Linked-Size for an LFS file).
    const httplib::Response head = hub.Request("HEAD", url, {}, false);
    if (head.status != 200 && !(head.status >= 300 && head.status < 400)) {
      Fail("HEAD ", url, ": HTTP ", head.status, ": ",
           StatusMeaning(head.status, repo.full(), o.revision, hub.has_token()));
    }
    FileMetadata meta;
    meta.etag = CleanEtag(head.has_header("X-Linked-Etag") ? head.get_header_value("X-Linked-Etag")
                                                           : head.get_header_value("ETag"));
    meta.size = HeaderNumber(head, "X-Linked-Size");
    if (meta.size == 0 && head.status == 200) meta.size = HeaderNumber(head, "Content-Length");
    if (meta.size == 0) meta.size = rf.size;
    if (!SafeEtag(meta.etag)) {
      Fail("HEAD ", url, ": no usable ETag ('", PrintableForError(meta.etag),
           "'): cannot name the file in the cache");
    }
    if (!rf.lfs_sha256.empty() && rf.lfs_sha256 != meta.etag) {
      Fail(name, ": the hub's file list gives sha256 ", rf.lfs_sha256, " but the file's ETag is ",
           meta.etag);
    }
    if (rf.size != 0 && meta.size != rf.size) {
      Fail(name, ": the hub's file list gives ", rf.size, " bytes but the file's headers ",
           meta.size);
    }
    p.total = meta.size;
    const std::string blob = repo_dir + "/blobs/" + meta.etag;
    const std::string link = result.snapshot + "/" + name;
    // ../../blobs/ETAG from snapshots/COMMIT/, one more ../ per directory in the name.
    std::string target = "../../blobs/" + meta.etag;
    for (const char c : name) {
      if (c == '/') target = "../" + target;
    }
    const bool present = FileExists(blob) && (meta.size == 0 || fs::file_size(blob) == meta.size);
    if (!present) {
      const std::string partial = blob + ".incomplete";
      uint64_t offset = FileExists(partial) ? fs::file_size(partial) : 0;
      p.resumed_from = offset;
      if (meta.size != 0 && offset > meta.size) offset = 0;  // not this file: start over
      std::FILE* out = nullptr;
      int status = 0;
      httplib::Headers headers;
      if (offset > 0 && offset < meta.size) headers.emplace("Range", Concat("bytes=", offset, "-"));
      if (offset == 0 || offset < meta.size || meta.size == 0) {
        std::string failure;  // set in the callbacks, which must not throw through httplib
        try {
          hub.Request(
              "GET", url, headers, true,
              [&](const httplib::Response& r) {
                status = r.status;
                if (r.status == 206) {
                  const std::string range = r.get_header_value("Content-Range");
                  if (range.rfind(Concat("bytes ", offset, "-"), 0) != 0) {
                    failure = Concat("the server answered the range from ", offset,
                                     " with 'Content-Range: ", PrintableForError(range), "'");
                    return false;
                  }
                } else if (r.status == 200) {
                  offset = 0;  // the whole file (the server ignored the range)
                } else {
                  return false;
                }
                out = std::fopen(partial.c_str(), offset == 0 ? "wb" : "ab");
                if (out == nullptr) {
                  failure = "cannot write " + partial;
                  return false;
                }
                p.done = offset;
                if (progress) progress(p);
                return true;
              },
              [&](const char* data, size_t n) {
                if (std::fwrite(data, 1, n, out) != n) {
                  failure = "cannot write " + partial + " (disk full?)";
                  return false;
                }
                p.done += n;
                result.bytes_downloaded += n;
                if (progress) progress(p);
                return true;
              });
        } catch (const Error& e) {
          failure = e.what();
        }
        if (out != nullptr && std::fclose(out) != 0 && failure.empty()) {
          failure = "cannot write " + partial + " (disk full?)";
        }
        if (!failure.empty()) {
          Fail(name, ": ", failure, "; ", FileExists(partial) ? fs::file_size(partial) : 0, " of ",
               meta.size, " bytes kept in ", partial,
               ": run the same `starling pull` again to resume");
        }
        if (status != 200 && status != 206) {
          Fail("GET ", url, ": HTTP ", status, ": ",
               StatusMeaning(status, repo.full(), o.revision, hub.has_token()));
        }
      }
      const uint64_t have = fs::file_size(partial);
      if (meta.size != 0 && have != meta.size) {
        Fail(name, ": the download stopped at ", have, " of ", meta.size,
             " bytes; run the same `starling pull` again to resume");
      }
      if (IsSha256(meta.etag)) {
        const std::string actual = Sha256File(partial);
        if (actual != meta.etag) {
          std::remove(partial.c_str());
          Fail(name, ": checksum mismatch: the hub gives sha256 ", meta.etag, " but the ", have,
               " bytes received hash to ", actual, "; the download was removed, run again");
        }
      }
      SyncPath(partial);
      fs::rename(partial, blob);
      SyncPath(repo_dir + "/blobs");
      ++result.downloaded;
    }
    Relink(link, target);
    ++result.files;
    p.done = meta.size != 0 ? meta.size : fs::file_size(blob);
    p.total = p.done;
    p.finished = true;
    p.already_present = present;
    if (progress) progress(p);
  }

  // 3. The branch or tag now points to this complete snapshot.
  if (o.revision != result.commit) {
    const std::string ref = repo_dir + "/refs/" + o.revision;
    fs::create_directories(fs::path(ref).parent_path());
    WriteFileAtomically(ref, [&](const ByteSink& sink) { sink(result.commit); });
  }
  return result;
}

}  // namespace starling
