module vigil.dev/e2e/pause

go 1.26
