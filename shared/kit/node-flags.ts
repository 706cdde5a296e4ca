// Node's flags for every function process, wherever it is started: the image's CMD, the package's start
// scripts and the benchmark's processes carry them (a test holds the three to this list; V8 reads them at
// start only, so they cannot be set from inside the process).
//
// --max-semi-space-size=4: V8's young generation grows to 16 MB semi-spaces by default, and a function
// process turns over short-lived objects (requests, rows, events) steadily, so its heap sat at about 110 MB
// with 35-40 MB live, and the all-in-one's peak RSS through a 100-tenant fleet cycle was 200 MB. With 4 MB
// semi-spaces the same cycle peaked at 126 MB and was no slower (the extra scavenges are short).
export const NODE_FLAGS = ['--max-semi-space-size=4'] as const;
