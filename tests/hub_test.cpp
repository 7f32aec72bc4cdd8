// The Hugging Face cache layout: repository ids, -m ORG/NAME resolution, file selection and
// sha256. The downloads themselves are tested end to end against a stand-in hub
// (tests/hub/pull_test.py).
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "core/error.h"
#include "error_message.h"
#include "hub/hf_cache.h"
#include "hub/pull.h"
#include "test_dir.h"

namespace starling {
namespace {

namespace fs = std::filesystem;

using testing::ErrorMessage;

TEST(RepoIdTest, AcceptsHubIdsAndNamesWhatIsWrong) {
  const RepoId id = ParseRepoId("berkeley-nest/Starling-LM-7B-alpha");
  EXPECT_EQ(id.org, "berkeley-nest");
  EXPECT_EQ(id.name, "Starling-LM-7B-alpha");
  EXPECT_EQ(ParseRepoId("gpt2").full(), "gpt2");
  EXPECT_NE(ErrorMessage([] { ParseRepoId("a/b/c"); }).find("expected ORG/NAME"),
            std::string::npos);
  EXPECT_NE(ErrorMessage([] { ParseRepoId("a/b c"); }).find("the character ' '"),
            std::string::npos);
  EXPECT_NE(ErrorMessage([] { ParseRepoId("a--b/c"); }).find("'--'"), std::string::npos);
  EXPECT_NE(ErrorMessage([] { ParseRepoId("../c"); }).find("'..'"), std::string::npos);
  EXPECT_NE(ErrorMessage([] { ParseRepoId("/c"); }).find("an empty part"), std::string::npos);
  EXPECT_TRUE(LooksLikeRepoId("org/name"));
  EXPECT_TRUE(LooksLikeRepoId("org/name@v1.0/model.gguf"));
  EXPECT_FALSE(LooksLikeRepoId("model.gguf"));
  EXPECT_FALSE(LooksLikeRepoId("/abs/path"));
  EXPECT_FALSE(LooksLikeRepoId("./dir/x"));
}

TEST(HubCacheDirTest, FollowsHuggingFaceHubsEnvironmentOrder) {
  const char* saved[4] = {std::getenv("HF_HUB_CACHE"), std::getenv("HUGGINGFACE_HUB_CACHE"),
                          std::getenv("HF_HOME"), std::getenv("XDG_CACHE_HOME")};
  const std::string keep[4] = {saved[0] ? saved[0] : "", saved[1] ? saved[1] : "",
                               saved[2] ? saved[2] : "", saved[3] ? saved[3] : ""};
  ::unsetenv("HF_HUB_CACHE");
  ::unsetenv("HUGGINGFACE_HUB_CACHE");
  ::setenv("HF_HOME", "/h", 1);
  EXPECT_EQ(HubCacheDir(), "/h/hub");
  ::setenv("HF_HUB_CACHE", "/c", 1);
  EXPECT_EQ(HubCacheDir(), "/c");
  ::unsetenv("HF_HUB_CACHE");
  ::unsetenv("HF_HOME");
  ::setenv("XDG_CACHE_HOME", "/x", 1);
  EXPECT_EQ(HubCacheDir(), "/x/huggingface/hub");
  const char* names[4] = {"HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"};
  for (int i = 0; i < 4; ++i) {
    if (saved[i] != nullptr) {
      ::setenv(names[i], keep[i].c_str(), 1);
    } else {
      ::unsetenv(names[i]);
    }
  }
}

class ResolveTest : public ::testing::Test {
 protected:
  ResolveTest() : dir_("hub_resolve") {
    cache_ = dir_.path();
    repo_ = cache_ + "/models--org--name";
    fs::create_directories(repo_ + "/refs");
    fs::create_directories(repo_ + "/blobs");
    fs::create_directories(repo_ + "/snapshots/c0ffee");
    dir_.Write("models--org--name/refs/main", "c0ffee");
    dir_.Write("models--org--name/blobs/e1", "{}");
    fs::create_symlink("../../blobs/e1", repo_ + "/snapshots/c0ffee/config.json");
  }
  testing::TempDir dir_;
  std::string cache_, repo_;
};

TEST_F(ResolveTest, RepoIdFindsTheSnapshotOfMainOrOfARevision) {
  EXPECT_EQ(ResolveModelPath("org/name", cache_), repo_ + "/snapshots/c0ffee");
  EXPECT_EQ(ResolveModelPath("org/name@c0ffee", cache_), repo_ + "/snapshots/c0ffee");
  EXPECT_EQ(ResolveModelPath("org/name/config.json", cache_),
            repo_ + "/snapshots/c0ffee/config.json");
  EXPECT_EQ(ResolveModelPath("org/name@main/config.json", cache_),
            repo_ + "/snapshots/c0ffee/config.json");
  EXPECT_EQ(ModelDisplayName(repo_ + "/snapshots/c0ffee"), "name");
  EXPECT_EQ(ModelDisplayName(repo_ + "/snapshots/c0ffee/"), "name");
  EXPECT_EQ(ModelDisplayName("/models/Starling-LM-7B-alpha/"), "Starling-LM-7B-alpha");
  EXPECT_EQ(ModelDisplayName("x.gguf"), "x.gguf");
}

TEST_F(ResolveTest, AnExistingPathIsNeverReplaced) {
  EXPECT_EQ(ResolveModelPath(repo_, cache_), repo_);
  EXPECT_EQ(ResolveModelPath("not-an-id.gguf", cache_), "not-an-id.gguf");  // loader reports it
}

TEST_F(ResolveTest, AMissingModelListsWhereItLookedAndHowToDownload) {
  const std::string e = ErrorMessage([&] { ResolveModelPath("org/other", cache_); });
  EXPECT_NE(e.find("cannot find the model 'org/other'"), std::string::npos) << e;
  EXPECT_NE(e.find(cache_ + "/models--org--other/refs/main (no such file)"), std::string::npos)
      << e;
  EXPECT_NE(e.find("starling pull org/other"), std::string::npos) << e;
  const std::string rev = ErrorMessage([&] { ResolveModelPath("org/name@v2", cache_); });
  EXPECT_NE(rev.find("refs/v2 (no such file)"), std::string::npos) << rev;
  EXPECT_NE(rev.find("--revision v2"), std::string::npos) << rev;
  const std::string file = ErrorMessage([&] { ResolveModelPath("org/name/x.gguf", cache_); });
  EXPECT_NE(file.find("snapshots/c0ffee/x.gguf (no such file)"), std::string::npos) << file;
  EXPECT_NE(ErrorMessage([&] { ResolveModelPath("org/name/../../x", cache_); }).find("'..'"),
            std::string::npos);
}

TEST_F(ResolveTest, ASnapshotOfGgufFilesResolvesToItsOneFileOrAsksWhichOne) {
  fs::create_directories(cache_ + "/models--org--gguf/refs");
  fs::create_directories(cache_ + "/models--org--gguf/snapshots/abc");
  dir_.Write("models--org--gguf/refs/main", "abc\n");
  dir_.Write("models--org--gguf/snapshots/abc/m.Q4_K_M.gguf", "GGUF");
  EXPECT_EQ(ResolveModelPath("org/gguf", cache_),
            cache_ + "/models--org--gguf/snapshots/abc/m.Q4_K_M.gguf");
  dir_.Write("models--org--gguf/snapshots/abc/m.Q8_0.gguf", "GGUF");
  const std::string e = ErrorMessage([&] { ResolveModelPath("org/gguf", cache_); });
  EXPECT_NE(e.find("holds 2 GGUF files; name one, e.g. -m ORG/NAME/m.Q4_K_M.gguf"),
            std::string::npos)
      << e;
}

TEST(SelectFilesTest, DefaultSkipsDuplicateWeightFormatsAndIncludeFilters) {
  const std::vector<std::string> files = {"config.json", "model.safetensors", "pytorch_model.bin",
                                          "tokenizer.model", "sub/notes.txt"};
  std::vector<std::string> skipped;
  EXPECT_EQ(SelectFiles(files, {}, &skipped),
            (std::vector<std::string>{"config.json", "model.safetensors", "tokenizer.model",
                                      "sub/notes.txt"}));
  EXPECT_EQ(skipped, std::vector<std::string>{"pytorch_model.bin"});
  EXPECT_EQ(SelectFiles({"config.json", "pytorch_model.bin"}, {}, nullptr),
            (std::vector<std::string>{"config.json", "pytorch_model.bin"}));
  EXPECT_EQ(SelectFiles(files, {"*.json", "*.model"}, nullptr),
            (std::vector<std::string>{"config.json", "tokenizer.model"}));
  EXPECT_EQ(SelectFiles(files, {"*notes*"}, nullptr), std::vector<std::string>{"sub/notes.txt"});
  const std::string e = ErrorMessage([] {
    SelectFiles({"a.Q4_0.gguf", "a.Q8_0.gguf"}, {}, nullptr);
  });
  EXPECT_NE(e.find("2 GGUF files; choose with --include"), std::string::npos) << e;
  EXPECT_EQ(SelectFiles({"a.Q4_0.gguf", "a.Q8_0.gguf"}, {"*Q8_0*"}, nullptr),
            std::vector<std::string>{"a.Q8_0.gguf"});
}

TEST(Sha256Test, MatchesTheStandardVectors) {
  testing::TempDir dir("hub_sha");
  dir.Write("empty", "");
  dir.Write("abc", "abc");
  EXPECT_EQ(Sha256File(dir.File("empty")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256File(dir.File("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

}  // namespace
}  // namespace starling
