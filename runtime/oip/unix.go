package oip

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// UnixSocketMode is the mode of the socket ListenUnix creates: the owner
// and its group may connect, nobody else.
const UnixSocketMode fs.FileMode = 0o660

// maxUnixPath is the longest socket path the kernel takes (sun_path,
// with its terminating NUL).
const maxUnixPath = 107

// ListenUnix listens on a Unix domain socket at path, mode 0660, for a
// training process on the same node. On such a socket the file mode is the
// permission: requests arriving on it need no bearer token, and the Host
// and Origin checks (which stop DNS rebinding, something no browser can do
// to a Unix socket) do not apply; see NewServer.
//
// A file at path that is not a socket is refused, as is a socket another
// process is listening on; a stale socket (nobody listening) is replaced.
// The socket is made with its mode in a private directory and renamed into
// place, so that it is never reachable with another mode. Closing the
// listener removes the socket.
func ListenUnix(path string) (net.Listener, error) {
	if path == "" {
		return nil, errors.New("empty socket path")
	}
	if len(path) > maxUnixPath {
		return nil, fmt.Errorf("socket path %s is %d bytes, over the %d a Unix socket takes", path, len(path), maxUnixPath)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&fs.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket (%s); refusing to replace it", path, fi.Mode().Type())
		}
		c, err := net.DialTimeout("unix", path, 2*time.Second)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("%s: another process is listening on it", path)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("%s: a socket that may be in use (%v); remove it if it is stale", path, err)
		}
		// Stale: nobody listens. The rename below replaces it.
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}

	ln, err := listenWithMode(path)
	if err != nil {
		return nil, err
	}
	fi, err := os.Lstat(path)
	if err != nil {
		ln.Close()
		return nil, err
	}
	return &unixListener{UnixListener: ln, path: path, file: fi}, nil
}

// listenWithMode binds a socket in a new private directory beside path,
// gives it UnixSocketMode and renames it to path. When the private path
// would be too long for a socket, it binds at path itself and changes the
// mode right after (the socket is then reachable under the umask's mode
// for that instant).
func listenWithMode(path string) (*net.UnixListener, error) {
	dir := filepath.Dir(path)
	tmp, err := os.MkdirTemp(dir, ".kh")
	if err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	defer os.RemoveAll(tmp)
	bindAt := filepath.Join(tmp, "s")
	direct := len(bindAt) > maxUnixPath
	if direct {
		bindAt = path
		_ = os.Remove(path) // the stale socket checked above
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: bindAt, Net: "unix"})
	if err != nil {
		return nil, err
	}
	ln.SetUnlinkOnClose(false) // Close removes path, below, not bindAt
	if err := os.Chmod(bindAt, UnixSocketMode); err != nil {
		ln.Close()
		os.Remove(bindAt)
		return nil, err
	}
	if !direct {
		if err := os.Rename(bindAt, path); err != nil {
			ln.Close()
			return nil, err
		}
	}
	return ln, nil
}

// unixListener removes its socket when closed, unless another file has
// taken its path since.
type unixListener struct {
	*net.UnixListener
	path string
	file fs.FileInfo
	once sync.Once
}

func (l *unixListener) Close() error {
	err := l.UnixListener.Close()
	l.once.Do(func() {
		if fi, serr := os.Lstat(l.path); serr == nil && os.SameFile(fi, l.file) {
			if rerr := os.Remove(l.path); rerr != nil && err == nil {
				err = rerr
			}
		}
	})
	return err
}

// unixConnKey marks the context of a request that arrived on a Unix socket.
type unixConnKey struct{}

// connContext marks connections accepted on a Unix socket (NewServer's
// ConnContext), so that the guard knows the file mode let them in.
func connContext(ctx context.Context, c net.Conn) context.Context {
	if c.LocalAddr().Network() == "unix" {
		return context.WithValue(ctx, unixConnKey{}, true)
	}
	return ctx
}

// onUnixSocket says whether ctx is a request's that came over a Unix
// socket.
func onUnixSocket(ctx context.Context) bool {
	v, _ := ctx.Value(unixConnKey{}).(bool)
	return v
}
