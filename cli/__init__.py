"""The `ssc` command line: thin commands that parse, call sscjax and print."""
