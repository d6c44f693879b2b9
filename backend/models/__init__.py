"""Models: which ids exist (`ids`, checked without torch), loading them and saving their pruned
form (`loading`), and where their weights live while a job runs (`placement`)."""
