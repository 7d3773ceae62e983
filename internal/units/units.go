package units

import (
	"fmt"
	"strconv"
	"strings"
)

// sizeUnits follow PostgreSQL: kB, MB, GB and TB are powers of 1024, as in
// postgresql.conf; the IEC spellings KiB, MiB, GiB, TiB mean the same.
var sizeUnits = []struct {
	suffix string
	mult   int64
}{
	{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10},
	{"TB", 1 << 40}, {"GB", 1 << 30}, {"MB", 1 << 20}, {"kB", 1 << 10}, {"KB", 1 << 10},
	{"B", 1},
}

// ParseSize parses "16MB", "512kB", "1GiB" or a plain number of bytes.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range sizeUnits {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("invalid size %q: use a number with an optional unit (B, kB, MB, GB, TB)", s)
	}
	return n * mult, nil
}

// FormatSize prints n bytes the way PostgreSQL does (1024-based kB, MB, GB)
// with one decimal: 16.0MB, 1.5GB, 512B; negative sizes keep their sign.
func FormatSize(n int64) string {
	neg := ""
	if n < 0 {
		neg, n = "-", -n
	}
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%s%.1fGB", neg, float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%s%.1fMB", neg, float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%s%.1fkB", neg, float64(n)/(1<<10))
	}
	return fmt.Sprintf("%s%dB", neg, n)
}
