module modelloop.dev/pause

go 1.24
