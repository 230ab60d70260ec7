"""The other APIs on the gateway's port (Anthropic Messages, OpenAI Responses, Ollama): each only translates its
request into the one generation contract (services/gateway/generate.py) and the chunks into its own shapes."""
