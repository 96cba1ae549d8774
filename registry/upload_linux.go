package registry

import (
	"os"

	"golang.org/x/sys/unix"
)

// startWriteback asks the kernel to start writing [off, off+n) of f to
// disk now, without waiting: the fsync at commit then has little left.
func startWriteback(f *os.File, off, n int64) {
	_ = unix.SyncFileRange(int(f.Fd()), off, n, unix.SYNC_FILE_RANGE_WRITE)
}

// dataSync flushes f's data (and the size needed to read it) to stable storage.
func dataSync(f *os.File) error {
	return unix.Fdatasync(int(f.Fd()))
}
