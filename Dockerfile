# smtpfw in a container, as a non-root user.
#
#   docker build -t smtpfw .
#   docker run -p 25:2525 -v /etc/smtpfw:/etc/smtpfw:ro -v smtpfw-spool:/var/lib/smtpfw smtpfw
#
# /etc/smtpfw/smtpfw.yaml must listen on 0.0.0.0:2525 (an unprivileged port
# inside the container; publish it as 25) and name its rules file, e.g.
#   listen: ["0.0.0.0:2525"]
#   rules: site.rules
# The Maildir and recordings default to ./var under /var/lib/smtpfw.
FROM python:3.11-slim

RUN useradd --system --create-home --home-dir /var/lib/smtpfw smtpfw
COPY . /src
RUN pip install --no-cache-dir /src && rm -rf /src

USER smtpfw
WORKDIR /var/lib/smtpfw
EXPOSE 2525
STOPSIGNAL SIGTERM
ENTRYPOINT ["smtpfw"]
CMD ["serve", "--config", "/etc/smtpfw/smtpfw.yaml"]
