package registry

import (
	"bytes"
	"encoding/json"
	"math"
	"sort"
	"strconv"
	"time"
)

// Pulls are counted, not kept one by one: per repository, reference (the
// tag or digest the client asked for) and hour. Counts older than
// pullHours are folded into one per day (UTC), and counts older than the
// history's age (registry.events_keep) go. A million pulls over ten
// thousand repositories take a few megabytes (TestHistoryMillionPulls).

// pullHours is how long pulls stay counted per hour.
const pullHours = 7 * 24

// cell is the pulls of one hour, or of one day (hour is then the day's
// first hour), in hours since the Unix epoch.
type cell struct {
	hour uint32
	n    uint32 // saturates
}

// pullCounters are the counts of every repository and reference:
// cells sorted by hour, those before the fold boundary aligned to days.
type pullCounters map[string]map[string][]cell

// hourOf is t's hour since the Unix epoch.
func hourOf(t time.Time) int64 { return t.Unix() / 3600 }

// add counts n pulls of repo's ref in hour; an hour older than nowHour's
// hourly window counts in its day.
func (p pullCounters) add(repo, ref string, hour, n, nowHour int64) {
	if n <= 0 || hour < 0 || hour > math.MaxUint32 {
		return
	}
	if hour < nowHour-pullHours {
		hour -= hour % 24
	}
	refs := p[repo]
	if refs == nil {
		refs = map[string][]cell{}
		p[repo] = refs
	}
	cs := refs[ref]
	h := uint32(hour)
	switch i := len(cs) - 1; {
	case i >= 0 && cs[i].hour == h: // the usual case: this hour again
		cs[i].n = addSat(cs[i].n, n)
	case i < 0 || cs[i].hour < h:
		cs = append(cs, cell{hour: h, n: addSat(0, n)})
	default: // a late count (another replica's, a legacy line)
		j := sort.Search(len(cs), func(k int) bool { return cs[k].hour >= h })
		if cs[j].hour == h {
			cs[j].n = addSat(cs[j].n, n)
		} else {
			cs = append(cs, cell{})
			copy(cs[j+1:], cs[j:])
			cs[j] = cell{hour: h, n: addSat(0, n)}
		}
	}
	refs[ref] = cs
}

func addSat(a uint32, n int64) uint32 {
	if s := int64(a) + n; s < math.MaxUint32 {
		return uint32(s)
	}
	return math.MaxUint32
}

// fold counts the hours older than nowHour's hourly window per day and
// drops the cells that started before the day of nowHour-ageHours.
func (p pullCounters) fold(nowHour, ageHours int64) {
	cutoff := nowHour - ageHours
	cutoff -= cutoff % 24
	hourly := nowHour - pullHours
	for repo, refs := range p {
		for ref, cs := range refs {
			out := cs[:0]
			for _, c := range cs {
				h := int64(c.hour)
				if h < cutoff {
					continue
				}
				if h < hourly {
					h -= h % 24
				}
				if k := len(out) - 1; k >= 0 && int64(out[k].hour) == h {
					out[k].n = addSat(out[k].n, int64(c.n))
					continue
				}
				out = append(out, cell{hour: uint32(h), n: c.n})
			}
			if len(out) == 0 {
				delete(refs, ref)
			} else {
				refs[ref] = out
			}
		}
		if len(refs) == 0 {
			delete(p, repo)
		}
	}
}

// encodeCells is cs as the counts of a history line: hour, count pairs, each
// hour after the first as the difference from the one before.
func encodeCells(cs []cell) []int64 {
	out := make([]int64, 0, 2*len(cs))
	var prev int64
	for i, c := range cs {
		h := int64(c.hour)
		if i == 0 {
			out = append(out, h)
		} else {
			out = append(out, h-prev)
		}
		out = append(out, int64(c.n))
		prev = h
	}
	return out
}

// eachCount calls fn with the hours and counts of a history line's counts
// (see encodeCells).
func eachCount(counts []int64, fn func(hour, n int64)) {
	var h int64
	for i := 0; i+1 < len(counts); i += 2 {
		if i == 0 {
			h = counts[0]
		} else {
			h += counts[i]
		}
		fn(h, counts[i+1])
	}
}

// PullCount is the pulls of one hour or one day.
type PullCount struct {
	Start time.Time `json:"start"`
	Pulls int64     `json:"pulls"`
}

// PullStats is the pull history of a repository, or of one tag or digest
// of it.
type PullStats struct {
	Repo string `json:"repo"`
	// Ref is the tag or digest; "" for the whole repository.
	Ref string `json:"ref,omitempty"`
	// Total is every pull counted (those of the history's age).
	Total int64 `json:"total"`
	// Hours are the last 7 days (at most the history's age) per hour,
	// oldest first, the current hour last.
	Hours []PullCount `json:"hours"`
	// Days are the history's age per day (UTC), oldest first, today last.
	Days []PullCount `json:"days"`
}

// statsOf sums the cells of refs (one reference, or all of a repository)
// into hours and days ending at nowHour.
func statsOf(repo, ref string, series [][]cell, nowHour, ageHours int64) PullStats {
	st := PullStats{Repo: repo, Ref: ref}
	nh := min(int64(pullHours), ageHours)
	nd := (ageHours + 23) / 24
	firstHour := nowHour - nh + 1
	today := nowHour - nowHour%24
	firstDay := today - 24*(nd-1)
	hours := make([]int64, nh)
	days := make([]int64, nd)
	for _, cs := range series {
		for _, c := range cs {
			h := int64(c.hour)
			if h > nowHour || h < firstDay {
				continue
			}
			st.Total += int64(c.n)
			days[(h-firstDay)/24] += int64(c.n)
			if h >= firstHour { // a day's cell is older than the hourly window
				hours[h-firstHour] += int64(c.n)
			}
		}
	}
	st.Hours = make([]PullCount, nh)
	for i := range hours {
		st.Hours[i] = PullCount{Start: time.Unix((firstHour+int64(i))*3600, 0).UTC(), Pulls: hours[i]}
	}
	st.Days = make([]PullCount, nd)
	for i := range days {
		st.Days[i] = PullCount{Start: time.Unix((firstDay+24*int64(i))*3600, 0).UTC(), Pulls: days[i]}
	}
	return st
}

// appendCountsLine appends the "counts" line of repo's ref to b: by hand
// when the names need no escaping (always, for names the registry
// accepts), else through encoding/json.
func appendCountsLine(b []byte, repo, ref string, counts []int64) []byte {
	if !plainJSON(repo) || !plainJSON(ref) {
		j, _ := json.Marshal(countsLine{Repo: repo, Ref: ref, Counts: counts})
		return append(append(b, j...), '\n')
	}
	b = append(b, `{"repo":"`...)
	b = append(b, repo...)
	b = append(b, `","ref":"`...)
	b = append(b, ref...)
	b = append(b, `","counts":[`...)
	for i, c := range counts {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, c, 10)
	}
	return append(b, "]}\n"...)
}

// plainJSON reports whether s is printable ASCII without quote or
// backslash: a JSON string as it is.
func plainJSON(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// parseCountsLine reads a "counts" line as appendCountsLine writes it by
// hand, appending its counts to counts; ok is false for a line of any other
// shape (encoding/json reads it then). A history holds mostly these: a
// start reads a million in well under a second.
func parseCountsLine(line []byte, counts []int64) (repo, ref []byte, out []int64, ok bool) {
	const pre, mid, post = `{"repo":"`, `","ref":"`, `","counts":[`
	line = bytes.TrimRight(line, "\r\n")
	rest, found := bytes.CutPrefix(line, []byte(pre))
	if !found {
		return nil, nil, counts, false
	}
	name := func() ([]byte, bool) {
		i := bytes.IndexByte(rest, '"')
		if i < 0 {
			return nil, false
		}
		s := rest[:i]
		for _, c := range s {
			if c < 0x20 || c == '\\' {
				return nil, false
			}
		}
		rest = rest[i:]
		return s, true
	}
	if repo, ok = name(); !ok {
		return nil, nil, counts, false
	}
	if rest, found = bytes.CutPrefix(rest, []byte(mid)); !found {
		return nil, nil, counts, false
	}
	if ref, ok = name(); !ok {
		return nil, nil, counts, false
	}
	if rest, found = bytes.CutPrefix(rest, []byte(post)); !found {
		return nil, nil, counts, false
	}
	nums, found := bytes.CutSuffix(rest, []byte("]}"))
	if !found {
		return nil, nil, counts, false
	}
	for len(nums) > 0 {
		i := bytes.IndexByte(nums, ',')
		field := nums
		if i >= 0 {
			field, nums = nums[:i], nums[i+1:]
			if len(nums) == 0 {
				return nil, nil, counts, false // a trailing comma
			}
		} else {
			nums = nil
		}
		neg := false
		if len(field) > 0 && field[0] == '-' {
			neg, field = true, field[1:]
		}
		if len(field) == 0 || len(field) > 18 {
			return nil, nil, counts, false
		}
		var v int64
		for _, c := range field {
			if c < '0' || c > '9' {
				return nil, nil, counts, false
			}
			v = v*10 + int64(c-'0')
		}
		if neg {
			v = -v
		}
		counts = append(counts, v)
	}
	return repo, ref, counts, true
}
