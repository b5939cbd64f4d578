"""The OpenAI Batch API: uploads, jobs, the worker that runs their lines in process, and the scheduler."""
