package jobs

import "github.com/sandq/sandq/internal/bytesize"

// ParseSize reads a byte size: a plain number of bytes, or a number with a
// unit. KiB/MiB/GiB/TiB (and K/M/G/T, Ki/Mi/Gi/Ti) are powers of 1024;
// KB/MB/GB/TB are powers of 1000. Fractions are allowed ("1.5GiB").
func ParseSize(s string) (int64, error) { return bytesize.Parse(s) }

// FormatSize prints a byte size with a binary unit, exactly when it can.
func FormatSize(n int64) string { return bytesize.Format(n) }
