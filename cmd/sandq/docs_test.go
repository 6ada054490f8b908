package main

import (
	"bufio"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

// repoRoot is the repository's root, seen from this package's directory.
const repoRoot = "../.."

// maxReadmeLines is the most lines the README (the front door) may have;
// the reference lives in docs/.
const maxReadmeLines = 320

// Characters that continue a flag or command name, and an environment key.
const (
	flagWord = `A-Za-z0-9_-`
	envWord  = `A-Za-z0-9_`
)

// TestDocsCoverCommandLine walks the whole command line and fails for every
// command, flag and SANDQ_* variable that docs/ never mentions: each command
// as "sandq <command path>", each flag as "--name" (or "-n"), each variable
// by its literal key.
func TestDocsCoverCommandLine(t *testing.T) {
	docs := readDocs(t)
	app := newApp()
	var missing []string
	checkFlags := func(where string, flags []cli.Flag) {
		for _, f := range flags {
			for _, name := range f.Names() {
				lit := "--" + name
				if len(name) == 1 {
					lit = "-" + name
				}
				if !mentions(docs, lit, flagWord) {
					missing = append(missing, where+": flag "+lit)
				}
			}
			if ev, ok := f.(interface{ GetEnvVars() []string }); ok {
				for _, key := range ev.GetEnvVars() {
					if !mentions(docs, key, envWord) {
						missing = append(missing, where+": environment variable "+key+" (of --"+f.Names()[0]+")")
					}
				}
			}
		}
	}
	checkFlags("sandq (global)", app.Flags)
	var walk func(path string, cmds []*cli.Command)
	walk = func(path string, cmds []*cli.Command) {
		for _, c := range cmds {
			p := path + " " + c.Name
			if !mentions(docs, p, flagWord) {
				missing = append(missing, p+": command never named as \""+p+"\"")
			}
			checkFlags(p, c.Flags)
			walk(p, c.Subcommands)
		}
	}
	walk("sandq", app.Commands)
	sort.Strings(missing)
	for _, m := range missing {
		t.Errorf("not in docs/*.md: %s", m)
	}
}

// TestReadmeIsShort keeps the README a front door: the reference is in docs/.
func TestReadmeIsShort(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(b), "\n"); n > maxReadmeLines {
		t.Errorf("README.md has %d lines, more than %d: move the reference to docs/", n, maxReadmeLines)
	}
}

// TestDocsLinks checks every relative link of README.md and docs/*.md: the
// file must exist, and a #fragment must name a heading of the page it
// points to (GitHub's anchors).
func TestDocsLinks(t *testing.T) {
	files := docFiles(t)
	files = append(files, filepath.Join(repoRoot, "README.md"))
	anchors := map[string]map[string]bool{}
	anchorsOf := func(path string) map[string]bool {
		if a, ok := anchors[path]; ok {
			return a
		}
		a := headingAnchors(t, path)
		anchors[path] = a
		return a
	}
	link := regexp.MustCompile(`\]\(([^)\s]+)\)`)
	for _, file := range files {
		for n, line := range readLines(t, file) {
			for _, m := range link.FindAllStringSubmatch(line, -1) {
				target := m[1]
				if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
					continue
				}
				path, frag, _ := strings.Cut(target, "#")
				dest := file
				if path != "" {
					dest = filepath.Join(filepath.Dir(file), path)
					if _, err := os.Stat(dest); err != nil {
						t.Errorf("%s:%d: link %q: %v", rel(file), n+1, target, err)
						continue
					}
				}
				if frag != "" && strings.HasSuffix(dest, ".md") && !anchorsOf(dest)[frag] {
					t.Errorf("%s:%d: link %q: %s has no heading with anchor #%s", rel(file), n+1, target, rel(dest), frag)
				}
			}
		}
	}
}

// mentions reports whether text holds lit as a whole word: neither
// directly preceded nor directly followed by a character of word, a
// character class's contents (so --image does not match --image-dir).
func mentions(text, lit, word string) bool {
	re := regexp.MustCompile(`(^|[^` + word + `])` + regexp.QuoteMeta(lit) + `($|[^` + word + `])`)
	return re.MatchString(text)
}

func docFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(repoRoot, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no docs/*.md")
	}
	return files
}

// readDocs returns every docs/*.md page, concatenated.
func readDocs(t *testing.T) string {
	t.Helper()
	var sb strings.Builder
	for _, f := range docFiles(t) {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		sb.Write(b)
		sb.WriteString("\n")
	}
	return sb.String()
}

func readLines(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines []string
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 1<<20), 1<<20)
	for s.Scan() {
		lines = append(lines, s.Text())
	}
	if err := s.Err(); err != nil {
		t.Fatal(err)
	}
	return lines
}

// headingAnchors returns the anchors GitHub gives the headings of a
// markdown file: lower case, punctuation dropped, spaces as hyphens, and
// -1, -2, ... on repeats. Headings inside fenced code blocks are not
// headings.
func headingAnchors(t *testing.T, path string) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	seen := map[string]int{}
	drop := regexp.MustCompile(`[^\p{L}\p{N} _-]`)
	fenced := false
	for _, line := range readLines(t, path) {
		if strings.HasPrefix(line, "```") {
			fenced = !fenced
			continue
		}
		if fenced || !strings.HasPrefix(line, "#") {
			continue
		}
		h := strings.TrimSpace(strings.TrimLeft(line, "#"))
		a := strings.ReplaceAll(drop.ReplaceAllString(strings.ToLower(h), ""), " ", "-")
		if n := seen[a]; n > 0 {
			out[a+"-"+strconv.Itoa(n)] = true
		} else {
			out[a] = true
		}
		seen[a]++
	}
	return out
}

func rel(path string) string {
	r, err := filepath.Rel(repoRoot, path)
	if err != nil {
		return path
	}
	return r
}
