module kubemoe.local/pause

go 1.22
