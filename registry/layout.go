package registry

import (
	"path"
	"path/filepath"
	"strconv"

	"github.com/opencontainers/go-digest"
)

// The storage path layout: every path of the registry's storage driver
// that labreg's code names is built here, and nowhere else. Paths are
// driver paths (slash-separated, absolute); fsPath turns one into a file
// of a filesystem driver's tree for the filesystem-only fast paths.
//
// distribution's own layout (registry/storage/paths.go), under v2Root:
//
//	repositories/<name>/_manifests/tags/<tag>/current/link
//	repositories/<name>/_manifests/revisions/<alg>/<hex>/link
//	repositories/<name>/_layers/<alg>/<hex>/link
//	repositories/<name>/_uploads/<id>/...
//	blobs/<alg>/<hex[:2]>/<hex>/data
//
// labreg's own, under labregRoot, beside distribution's tree and shared
// by every replica on the store:
//
//	referrers/<name>/_subjects/<alg>/<hex>/<alg>-<hex>.json   a referrer's descriptor
//	referrers/<name>/_referrers/<alg>-<hex>                    the subject it was filed under
//	referrers/<name>/_scanned                                 the repository was scanned once
//	referrers/<name>/_pending/<alg>-<hex>                      a referrer being pushed, not indexed yet
//	http-secret.hmac                                          the HTTP secret's HMAC (storage.go)
//
// sha512 aliases are links in distribution's layout (revisions/sha512/…
// and _layers/sha512/…, see digest.go). Path components of a repository
// name cannot start with "_", so "_subjects" never collides with a nested
// repository.
const (
	v2Root     = "/docker/registry/v2"
	labregRoot = "/labreg"
)

// repoPath is the directory of repository repo.
func repoPath(repo string) string { return path.Join(v2Root, "repositories", repo) }

// reposPath is the directory of every repository.
func reposPath() string { return path.Join(v2Root, "repositories") }

// tagsPath is the directory of repo's tags.
func tagsPath(repo string) string { return path.Join(repoPath(repo), "_manifests", "tags") }

// tagLinkPath is the link naming the manifest tag points to.
func tagLinkPath(repo, tag string) string {
	return path.Join(tagsPath(repo), tag, "current", "link")
}

// linkDir is the directory distribution keeps kind's links of repo in
// (kind "manifests": revisions; anything else: layers).
func linkDir(repo, kind string) string {
	if kind == "manifests" {
		return path.Join(repoPath(repo), "_manifests", "revisions")
	}
	return path.Join(repoPath(repo), "_layers")
}

// linkPath is the link of digest d of kind in repo.
func linkPath(repo, kind string, d digest.Digest) string {
	return path.Join(linkDir(repo, kind), d.Algorithm().String(), d.Encoded(), "link")
}

// uploadsPath is the directory of repo's uploads in progress.
func uploadsPath(repo string) string { return path.Join(repoPath(repo), "_uploads") }

// uploadPath is the directory of one upload.
func uploadPath(repo, id string) string { return path.Join(uploadsPath(repo), id) }

// uploadDataPath is the bytes an upload received so far.
func uploadDataPath(repo, id string) string { return path.Join(uploadPath(repo, id), "data") }

// uploadStartedPath records when an upload started.
func uploadStartedPath(repo, id string) string { return path.Join(uploadPath(repo, id), "startedat") }

// uploadHashStatePath is the sha256 state of an upload after offset bytes
// (distribution's resumable digest, blobwriter_resumable.go).
func uploadHashStatePath(repo, id string, offset int64) string {
	return path.Join(uploadPath(repo, id), "hashstates", "sha256", strconv.FormatInt(offset, 10))
}

// blobsPath is the directory of every blob stored under alg.
func blobsPath(alg digest.Algorithm) string { return path.Join(v2Root, "blobs", alg.String()) }

// blobDataPath is the content of blob d (which must be valid).
func blobDataPath(d digest.Digest) string {
	hx := d.Encoded()
	return path.Join(blobsPath(d.Algorithm()), hx[:2], hx, "data")
}

// referrersRepoPath is the referrer index of repo.
func referrersRepoPath(repo string) string { return path.Join(labregRoot, "referrers", repo) }

// referrersSubjectPath holds one file per referrer of subject in repo.
func referrersSubjectPath(repo string, subject digest.Digest) string {
	return path.Join(referrersRepoPath(repo), "_subjects", subject.Algorithm().String(), subject.Encoded())
}

// referrerEntryPath is referrer's descriptor in subject's list.
func referrerEntryPath(repo string, subject, referrer digest.Digest) string {
	return path.Join(referrersSubjectPath(repo, subject), referrer.Algorithm().String()+"-"+referrer.Encoded()+".json")
}

// referrerSubjectPath names the subject referrer was filed under, so
// that removing it needs neither the (maybe deleted) manifest nor a scan.
func referrerSubjectPath(repo string, referrer digest.Digest) string {
	return path.Join(referrersRepoPath(repo), "_referrers", referrer.Algorithm().String()+"-"+referrer.Encoded())
}

// referrerPendingPath records a referrer before distribution stores it,
// until it is indexed (referrers.go).
func referrerPendingPath(repo string, referrer digest.Digest) string {
	return path.Join(referrersRepoPath(repo), "_pending", referrer.Algorithm().String()+"-"+referrer.Encoded())
}

// referrersPendingPath holds the pending referrers of repo.
func referrersPendingPath(repo string) string { return path.Join(referrersRepoPath(repo), "_pending") }

// referrersScannedPath marks a repository whose manifests were scanned.
func referrersScannedPath(repo string) string { return path.Join(referrersRepoPath(repo), "_scanned") }

// secretCheckPath holds an HMAC of the HTTP secret (never the secret) so
// that a replica with another secret is refused at start.
var secretCheckPath = path.Join(labregRoot, "http-secret.hmac")

// fsPath is the file of driver path p in a filesystem driver rooted at
// root. Only the filesystem-only code (fast paths, scrub, upload tidying)
// uses it.
func fsPath(root, p string) string { return filepath.Join(root, filepath.FromSlash(p)) }
