FROM python:3.11-slim
WORKDIR /opt/exo
COPY . .
RUN ./setup.sh
ENV PATH=/opt/exo/.venv/bin:$PATH
EXPOSE 8080
CMD ["exo", "--host", "0.0.0.0"]
