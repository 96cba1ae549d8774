package registry

import (
	"log/slog"
	"net/http"
	"time"
)

func levelFor(status int) slog.Level {
	if status >= 500 {
		return slog.LevelError
	}
	return slog.LevelInfo
}

func slogAttrs(r *http.Request, status int, n int64, d time.Duration) []slog.Attr {
	return []slog.Attr{
		slog.String("method", r.Method),
		slog.String("path", r.URL.Path),
		slog.Int("status", status),
		slog.Int64("bytes", n),
		slog.Duration("duration", d),
		slog.String("remote", r.RemoteAddr),
		slog.String("agent", r.UserAgent()),
	}
}
